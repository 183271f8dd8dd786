"""POST /internal/executors/http-download: run one step of a `http_download` transformer."""

from __future__ import annotations

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response

from shared import api
from shared.executors import http_download, runtime


def routes(app: APIGatewayHttpResolver) -> None:
    @app.post("/internal/executors/http-download")
    def run_step() -> Response[str]:
        return runtime.handle(app, http_download.execute)


handler = api.handler_for(routes)
