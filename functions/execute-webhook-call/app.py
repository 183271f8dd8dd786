"""POST /internal/executors/webhook-call: run one step of a `webhook_call` transformer."""

from __future__ import annotations

from aws_lambda_powertools.event_handler import Response

from shared import api
from shared.executors import webhook_call, runtime

app = api.create_app()


@app.post("/internal/executors/webhook-call")
def run_step() -> Response[str]:
    return runtime.handle(app, webhook_call.execute)


handler = api.handler_for(app)
