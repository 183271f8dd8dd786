"""GET /jobs: the caller's jobs, newest first, keyset-paginated."""

from __future__ import annotations

from shared import api, auth, jobs


def list_jobs(request: api.Request) -> api.Reply:
    user = auth.verify_user(request.headers)
    return api.Reply(200, jobs.list_jobs(user, request.query))


handler = api.handler_for(list_jobs)
