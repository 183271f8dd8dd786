"""POST /internal/executors/webhook-call: run one step of a `webhook_call` transformer."""

from __future__ import annotations

from shared import api
from shared.executors import runtime, webhook_call


def run_step(request: api.Request) -> api.Reply:
    return runtime.handle(request, webhook_call.execute)


handler = api.handler_for(run_step)
