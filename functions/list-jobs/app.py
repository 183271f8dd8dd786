"""GET /jobs: the caller's jobs (an admin's: their tenant's, with scope=tenant), newest first,
keyset-paginated, filtered by status, workflow and creation time."""

from __future__ import annotations

from shared import api, auth, jobs


def list_jobs(request: api.Request) -> api.Reply:
    caller = auth.verify_caller(request.headers)
    return api.Reply(200, jobs.list_jobs(caller, request.query))


handler = api.handler_for(list_jobs)
