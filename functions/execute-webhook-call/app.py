"""POST /internal/executors/webhook-call: run one step of a `webhook_call` transformer."""

from __future__ import annotations

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response

from shared import api
from shared.executors import runtime, webhook_call


def routes(app: APIGatewayHttpResolver) -> None:
    @app.post("/internal/executors/webhook-call")
    def run_step() -> Response[str]:
        return runtime.handle(app, webhook_call.execute)


handler = api.handler_for(routes)
