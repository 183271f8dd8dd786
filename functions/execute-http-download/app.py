"""POST /internal/executors/http-download: run one step of a `http_download` transformer."""

from __future__ import annotations

from shared import api
from shared.executors import http_download, runtime


def run_step(request: api.Request) -> api.Reply:
    return runtime.handle(request, http_download.execute)


handler = api.handler_for(run_step)
