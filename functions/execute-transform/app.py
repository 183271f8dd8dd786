"""POST /internal/executors/transform: run one step of a `transform` transformer."""

from __future__ import annotations

from shared import api
from shared.executors import runtime, transform


def run_step(request: api.Request) -> api.Reply:
    return runtime.handle(request, transform.execute)


handler = api.handler_for(run_step)
