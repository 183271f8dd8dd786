"""GET /stats: job counts by status and jobs finished per minute, for the dashboard."""

from __future__ import annotations

from shared import api, auth, jobs


def get_stats(request: api.Request) -> api.Reply:
    return api.Reply(200, jobs.stats(auth.verify_caller(request.headers)))


handler = api.handler_for(get_stats)
