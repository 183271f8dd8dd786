"""Seed 002's logging: each step's start and end as JSON lines carrying the job, step,
attempt and transformer (and the error type and duration at its end); step inputs and
outputs only when SUPAFLOW_LOG_STEP_DATA is on (off by default: personal data)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from shared.executors import runtime
from shared.executors.base import StepContext, StepError
from shared.log import logger
from shared.protocol import StepRequest, TransformerRef
from shared.settings import settings

SECRET_INPUT = {"email": "ada@example.test"}


def request() -> StepRequest:
    return StepRequest(job_id=uuid.uuid4(), step_id="greet", attempt=2, lease_token=uuid.uuid4(),
                       timeout_s=30, inputs=SECRET_INPUT,
                       transformer=TransformerRef(id="t-greet", type="transform", config={}))


def lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The JSON lines the records became, through the logger's own formatter."""
    return [json.loads(logger.registered_formatter.format(record)) for record in caplog.records]


def echo(_config: dict[str, Any], inputs: Any, _ctx: StepContext) -> Any:
    return {"hello": inputs["email"]}


def broken(_config: dict[str, Any], _inputs: Any, _ctx: StepContext) -> Any:
    raise StepError("upstream said 503", retryable=True, error_type="http_5xx")


@pytest.fixture
def step_data_logging(monkeypatch: pytest.MonkeyPatch) -> Any:
    def switch(on: bool) -> None:
        monkeypatch.setenv("SUPAFLOW_LOG_STEP_DATA", "true" if on else "")
        settings.cache_clear()
    yield switch
    monkeypatch.delenv("SUPAFLOW_LOG_STEP_DATA", raising=False)
    settings.cache_clear()


def test_a_steps_start_and_end_are_logged_without_its_data(
        caplog: pytest.LogCaptureFixture, step_data_logging: Any) -> None:
    step_data_logging(False)
    caplog.set_level("INFO")
    step = request()
    runtime.run_step(echo, step)
    runtime.run_step(broken, step)
    logged = lines(caplog)
    assert [line["message"] for line in logged] == [
        "step started", "step succeeded", "step started", "step failed"]
    for line in logged:
        assert (line["job_id"], line["step_id"], line["attempt"], line["transformer"]) == (
            str(step.job_id), "greet", 2, "t-greet")
        assert "ada@example.test" not in json.dumps(line)
    assert logged[1]["duration_s"] >= 0
    assert (logged[3]["error_type"], logged[3]["retryable"]) == ("http_5xx", True)


def test_step_data_is_logged_only_when_asked(
        caplog: pytest.LogCaptureFixture, step_data_logging: Any) -> None:
    step_data_logging(True)
    caplog.set_level("INFO")
    runtime.run_step(echo, request())
    started, succeeded = lines(caplog)
    assert started["inputs"] == SECRET_INPUT
    assert succeeded["output"] == {"hello": "ada@example.test"}
