"""Helpers for engine tests: define transformers and workflows, run jobs, check the event log."""

from __future__ import annotations

import time
import uuid
from typing import Any

from psycopg.types.json import Jsonb

from tests.api_client import Api
from tests.conftest import Stack, User, create_workflow

TERMINAL = ("completed", "failed", "cancelled")


def add_transformer(stack: Stack, type_: str, target: str, config: dict[str, Any]) -> str:
    tid = f"t-{uuid.uuid4().hex[:10]}"
    stack.sql(
        "insert into workflow.transformers (id, type, config, target_function)"
        " values (%s, %s, %s, %s)",
        (tid, type_, Jsonb(config), target),
    )
    return tid


def failing_transform(stack: Stack, attempts: int, retryable: bool = True,
                      message: str = "boom") -> str:
    return add_transformer(stack, "transform", "execute-transform", {
        "fail": {"attempts": attempts, "retryable": retryable, "message": message}})


def start(api: Api, user: User, workflow: str, input_data: dict[str, Any]) -> str:
    response = api.start(user.token, {"workflow_id": workflow, "input_data": input_data})
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def wait_job(api: Api, user: User, job_id: str, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job: dict[str, Any] = api.request("GET", f"/jobs/{job_id}", user.token).json()
        if job["status"] in TERMINAL or time.monotonic() > deadline:
            return job
        time.sleep(0.05)


def run_workflow(stack: Stack, api: Api, definition: dict[str, Any], input_data: dict[str, Any],
                 timeout_s: float = 30) -> tuple[User, dict[str, Any]]:
    user = stack.create_user()
    job_id = start(api, user, create_workflow(stack, definition), input_data)
    return user, wait_job(api, user, job_id, timeout_s)


def events(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    rows = stack.sql(
        "select seq, event_type, step_id, attempt, from_status, to_status, detail"
        " from workflow.job_events where job_id = %s order by seq", (job_id,))
    keys = ("seq", "event_type", "step_id", "attempt", "from_status", "to_status", "detail")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def assert_consistent_log(stack: Stack, job: dict[str, Any]) -> list[dict[str, Any]]:
    """No gaps, each step completed at most once, and the log ends where the job is."""
    log = events(stack, job["job_id"])
    assert [e["seq"] for e in log] == list(range(1, len(log) + 1))
    completed = [e["step_id"] for e in log if e["event_type"] == "step_completed"]
    assert len(completed) == len(set(completed)), f"a step completed twice: {completed}"
    job_events = [e for e in log if e["event_type"].startswith("job_")]
    assert job_events[0]["event_type"] == "job_created"
    assert job_events[-1]["to_status"] == job["status"]
    history = [h["status"] for h in job["state_history"]]
    assert history == [e["to_status"] for e in job_events]
    return log


def wait_status(stack: Stack, job_id: str, status: str, timeout_s: float = 20) -> str:
    """Polls the database (not the API): for jobs created in SQL, with no user token at hand."""
    deadline = time.monotonic() + timeout_s
    while True:
        current = str(stack.sql("select status from workflow.jobs where id = %s", (job_id,))[0][0])
        if current == status or time.monotonic() > deadline:
            return current
        time.sleep(0.1)
