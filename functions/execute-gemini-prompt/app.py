"""POST /internal/executors/gemini-prompt: run one step of a `gemini_prompt` transformer."""

from __future__ import annotations

from shared import api
from shared.executors import gemini_prompt, runtime


def run_step(request: api.Request) -> api.Reply:
    return runtime.handle(request, gemini_prompt.execute)


handler = api.handler_for(run_step)
