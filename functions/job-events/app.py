"""GET /jobs/{jobId}/events: a job's event log, a page at a time."""

from __future__ import annotations

from shared import api, auth, jobs


def job_events(request: api.Request) -> api.Reply:
    caller = auth.verify_caller(request.headers)
    return api.Reply(200, jobs.events(caller, request.path_param("jobId"), request.query))


handler = api.handler_for(job_events)
