"""GET /health: anyone may ask; 200 when the deployment can run jobs, 503 otherwise."""

from __future__ import annotations

from shared import api, health


def get_health(request: api.Request) -> api.Reply:
    status, report = health.check()
    return api.Reply(status, report, {"Cache-Control": "no-store"})


handler = api.handler_for(get_health)
