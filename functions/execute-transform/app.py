"""POST /internal/executors/transform: run one step of a `transform` transformer."""

from __future__ import annotations

from aws_lambda_powertools.event_handler import Response

from shared import api
from shared.executors import transform, runtime

app = api.create_app()


@app.post("/internal/executors/transform")
def run_step() -> Response[str]:
    return runtime.handle(app, transform.execute)


handler = api.handler_for(app)
