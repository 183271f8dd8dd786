"""Starting jobs and waiting for them: through the API as a user, over RPC without a
kick, and by polling the database for jobs no token at hand can read."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any

import httpx
import psycopg

from testkit.api import Api
from testkit.stack import Stack, User
from testkit.workflows import create_workflow

TERMINAL = ("completed", "failed", "cancelled")


# Through the checked API client (tests) ---------------------------------------------


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
    """A new user runs one job of a new workflow to its end: the job as GET /jobs/{id} shows it."""
    user = stack.create_user()
    job_id = start(api, user, create_workflow(stack, definition), input_data)
    return user, wait_job(api, user, job_id, timeout_s)


# Through outages (fault tests, the chaos soak) ---------------------------------------


class StartFailed(RuntimeError):
    pass


def start_job(http: httpx.Client, stack: Stack, user: User, workflow_id: str, input_data: dict[str, Any],
              *, key: str | None = None, deadline_s: float = 60.0, retries: list[str] | None = None) -> str:
    """POST /workflows/start (which kicks the orchestrator), retried through outages.

    The idempotency key makes the retries safe: a start whose answer was lost
    returns the job it created instead of a second one.
    """
    key = key or uuid.uuid4().hex
    body = {"workflow_id": workflow_id, "input_data": input_data, "idempotency_key": key}
    deadline = time.monotonic() + deadline_s
    last = ""
    while time.monotonic() < deadline:
        try:
            response = http.post(f"{stack.api_url}/workflows/start", json=body,
                                 headers={"Authorization": f"Bearer {user.token}"}, timeout=15)
        except httpx.HTTPError as exc:
            last = repr(exc)
        else:
            if response.status_code in (200, 202):
                return str(response.json()["job_id"])
            last = f"HTTP {response.status_code} {response.text[:200]}"
            if response.status_code < 500 and response.status_code != 429:
                raise StartFailed(last)
        if retries is not None:
            retries.append(last)
        time.sleep(0.3)
    raise StartFailed(f"could not start a job within {deadline_s:.0f} s: {last}")


def start_job_quietly(http: httpx.Client, stack: Stack, user: User, workflow_id: str,
                      input_data: dict[str, Any]) -> str:
    """start_job over RPC as the service role, for `user`: the same SQL as
    start-workflow, but no orchestrator kick."""
    version = stack.sql("select version from workflow.workflows where id = %s", (workflow_id,))[0][0]
    response = http.post(
        f"{stack.api_url}/rest/v1/rpc/start_job",
        json={"p_user_id": user.id, "p_workflow_id": workflow_id, "p_workflow_version": version,
              "p_input": input_data},
        headers={**stack.service_headers(), "Content-Profile": "workflow"},
        timeout=15,
    )
    response.raise_for_status()
    return str(response.json()["job_id"])


# From the database --------------------------------------------------------------------


def statuses(stack: Stack, job_ids: Iterable[str]) -> dict[str, str]:
    rows = stack.sql("select id::text, status from workflow.jobs where id = any(%s::uuid[])",
                     (list(job_ids),))
    return {r[0]: r[1] for r in rows}


def wait_status(stack: Stack, job_id: str, status: str, timeout_s: float = 20) -> str:
    """Polls the database (not the API): for jobs created in SQL, with no user token at hand."""
    deadline = time.monotonic() + timeout_s
    while True:
        current = str(stack.sql("select status from workflow.jobs where id = %s", (job_id,))[0][0])
        if current == status or time.monotonic() > deadline:
            return current
        time.sleep(0.1)


def wait_terminal(stack: Stack, job_ids: list[str], timeout: float) -> float:
    """Until every job is completed, failed or cancelled; returns the seconds waited."""
    started = time.monotonic()
    while True:
        try:
            found = statuses(stack, job_ids)
        except psycopg.Error:
            found = {}
        if len(found) == len(job_ids) and all(s in TERMINAL for s in found.values()):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            stuck = {j: found.get(j, "?") for j in job_ids if found.get(j) not in TERMINAL}
            raise AssertionError(
                f"{len(stuck)} of {len(job_ids)} jobs not terminal after {timeout:.0f} s:\n"
                + describe(stack, list(stuck)[:5]))
        time.sleep(0.25)


def events(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    """A job's event log, oldest first."""
    rows = stack.sql(
        "select seq, event_type, step_id, attempt, from_status, to_status, detail"
        " from workflow.job_events where job_id = %s order by seq", (job_id,))
    keys = ("seq", "event_type", "step_id", "attempt", "from_status", "to_status", "detail")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def describe(stack: Stack, job_ids: list[str]) -> str:
    """A readable dump of some jobs, their steps and their events, for failure messages."""
    lines = []
    for job_id in job_ids:
        (status, error), = stack.sql("select status, error_message from workflow.jobs where id = %s",
                                     (job_id,))
        lines.append(f"job {job_id}: {status} {error or ''}")
        for row in stack.sql("select step_id, status, attempt, lease_expires_at, next_attempt_at, error"
                             " from workflow.job_steps where job_id = %s order by id", (job_id,)):
            lines.append(f"  step {row}")
        for row in stack.sql("select seq, event_type, step_id, attempt, from_status, to_status"
                             " from workflow.job_events where job_id = %s order by seq", (job_id,)):
            lines.append(f"  event {row}")
    return "\n".join(lines)
