"""POST /internal/executors/transform: run one step of a `transform` transformer."""

from __future__ import annotations

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response

from shared import api
from shared.executors import runtime, transform


def routes(app: APIGatewayHttpResolver) -> None:
    @app.post("/internal/executors/transform")
    def run_step() -> Response[str]:
        return runtime.handle(app, transform.execute)


handler = api.handler_for(routes)
