"""POST /internal/executors/gemini-prompt: run one step of a `gemini_prompt` transformer."""

from __future__ import annotations

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response

from shared import api
from shared.executors import gemini_prompt, runtime


def routes(app: APIGatewayHttpResolver) -> None:
    @app.post("/internal/executors/gemini-prompt")
    def run_step() -> Response[str]:
        return runtime.handle(app, gemini_prompt.execute)


handler = api.handler_for(routes)
