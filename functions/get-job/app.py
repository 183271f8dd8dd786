"""GET /jobs/{jobId}: one of the caller's jobs with a summary of its steps."""

from __future__ import annotations

from shared import api, auth, jobs


def get_job(request: api.Request) -> api.Reply:
    caller = auth.verify_caller(request.headers)
    return api.Reply(200, jobs.get(caller, request.path_param("jobId")))


handler = api.handler_for(get_job)
