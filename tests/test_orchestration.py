"""The engine end to end: SQL state machine, orchestrator, executors, over real HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import boto3
import httpx
import pytest

from shared.executors.webhook_call import verify_signature
from shared.orchestrator import Knobs, PassSummary, run_pass
from stack.demo import run as run_demo
from stack.demo import sine_wav
from supaflow_models.definitions import normalise
from testkit import faults
from testkit.api import Api
from testkit.invariants import assert_consistent_log
from testkit.jobs import events, run_workflow, start, wait_job, wait_status
from testkit.stack import Stack, net_response
from testkit.workflows import add_transformer, create_workflow, failing_transformer, webhook_transformer

FAST_RETRY = {"max_retries": 3, "initial_delay_s": 0.05, "max_delay_s": 0.2, "jitter": 0}

DIAMOND = {
    "steps": [
        {"id": "a", "transformer": "transform", "inputs": {"n": "$.input.n"}},
        {"id": "b", "transformer": "transform", "depends_on": ["a"],
         "inputs": {"double": "$.steps.a.output.n"}},
        {"id": "c", "transformer": "transform", "depends_on": ["a"],
         "inputs": {"label": "n is {{ $.steps.a.output.n }}"}},
        {"id": "d", "transformer": "transform", "depends_on": ["b", "c"],
         "inputs": {"b": "$.steps.b.output", "c": "$.steps.c.output.label"}},
    ],
    "output": {"summary": "$.steps.d.output", "input": "$.input.n"},
}


def test_a_dag_runs_to_completion_without_cron(stack: Stack, api: Api, no_cron: None) -> None:
    _, job = run_workflow(stack, api, DIAMOND, {"n": 7})
    assert job["status"] == "completed", job
    assert job["final_result"] == {"summary": {"b": {"double": 7}, "c": "n is 7"}, "input": 7}
    assert job["step_data"]["c"] == {"label": "n is 7"}
    assert {s["step_id"]: s["status"] for s in job["steps"]} == dict.fromkeys("abcd", "completed")
    assert job["started_at"] and job["completed_at"] and job["current_step_id"] is None
    log = assert_consistent_log(stack, job)
    order = [e["step_id"] for e in log if e["event_type"] == "step_started"]
    assert order[0] == "a" and order[-1] == "d" and sorted(order[1:3]) == ["b", "c"]


def test_retryable_failures_are_retried_with_backoff(stack: Stack, api: Api) -> None:
    flaky = failing_transformer(stack, attempts=2)
    definition = {"retry": FAST_RETRY, "steps": [
        {"id": "flaky", "transformer": flaky, "inputs": {"x": "$.input.x"}}]}
    _, job = run_workflow(stack, api, definition, {"x": 1})
    assert job["status"] == "completed", job
    assert job["final_result"] == {"x": 1}
    assert job["retry_count"] == 2
    (step,) = job["steps"]
    assert step["attempt"] == 3
    log = assert_consistent_log(stack, job)
    retries = [e for e in log if e["event_type"] == "step_retry_scheduled"]
    assert [e["attempt"] for e in retries] == [1, 2]
    assert all(e["detail"]["error"] == "boom" for e in retries)
    assert "awaiting_retry" in [h["status"] for h in job["state_history"]]


def test_a_permanent_failure_fails_the_job_and_cancels_the_rest(stack: Stack, api: Api) -> None:
    broken = failing_transformer(stack, attempts=99, retryable=False, message="bad input file")
    definition = {"steps": [
        {"id": "a", "transformer": "transform", "inputs": {}},
        {"id": "bad", "transformer": broken, "depends_on": ["a"], "inputs": {}},
        {"id": "slow", "transformer": failing_transformer(stack, 99), "depends_on": ["a"],
         "retry": {"max_retries": 5, "initial_delay_s": 30}, "inputs": {}},
        {"id": "after", "transformer": "transform", "depends_on": ["bad", "slow"], "inputs": {}},
    ]}
    _, job = run_workflow(stack, api, definition, {})
    assert job["status"] == "failed", job
    assert "bad" in job["error_message"] and "bad input file" in job["error_message"]
    statuses = {s["step_id"]: s["status"] for s in job["steps"]}
    assert statuses == {"a": "completed", "bad": "failed", "slow": "cancelled",
                        "after": "cancelled"}
    assert job["final_result"] is None and job["completed_at"]
    assert_consistent_log(stack, job)


def test_exhausted_retries_fail_the_job(stack: Stack, api: Api) -> None:
    always = failing_transformer(stack, attempts=99, message="upstream 503")
    definition = {"steps": [{"id": "s", "transformer": always, "inputs": {},
                             "retry": {**FAST_RETRY, "max_retries": 1}}]}
    _, job = run_workflow(stack, api, definition, {})
    assert job["status"] == "failed"
    assert job["steps"][0]["attempt"] == 2
    assert "attempt 2 of 2" in job["error_message"] and "upstream 503" in job["error_message"]
    assert_consistent_log(stack, job)


def test_unknown_transformer_and_unresolvable_input_fail_clearly(stack: Stack, api: Api) -> None:
    _, job = run_workflow(stack, api, {"steps": [{"id": "s", "transformer": "no-such"}]}, {})
    assert job["status"] == "failed" and "unknown transformer 'no-such'" in job["error_message"]
    _, job = run_workflow(stack, api, {"steps": [
        {"id": "s", "transformer": "transform", "inputs": {"v": "$.input.missing"}}]}, {})
    assert job["status"] == "failed" and "$.input.missing" in job["error_message"]


def _service(stack: Stack) -> httpx.Client:
    return httpx.Client(base_url=f"{stack.api_url}/rest/v1/rpc", headers={
        **stack.service_headers(), "Content-Profile": "workflow", "Accept-Profile": "workflow"})


def _pending_job(stack: Stack, *, hold: bool = False,
                 step: dict[str, Any] | None = None) -> tuple[str, str]:
    """A one-step job created in SQL (no kick). `hold` keeps its step out of every
    orchestrator's reach (due in an hour, retries an hour apart), for driving the state
    machine by hand."""
    user = stack.create_user()
    step = step or {"id": "only", "transformer": "transform"}
    if hold:
        step["retry"] = {"max_retries": 3, "initial_delay_s": 3600, "max_delay_s": 3600}
    wid = create_workflow(stack, {"steps": [step]})
    with stack.db() as conn, conn.transaction():
        row = conn.execute("select workflow.start_job(%s, %s, 1, '{}'::jsonb)",
                           (user.id, wid)).fetchone()
        assert row is not None
        job_id = str(row[0]["job_id"])
        if hold:  # in the same transaction: no orchestrator ever sees it due
            conn.execute("update workflow.job_steps set next_attempt_at = now() + interval '1 hour'"
                         " where job_id = %s", (job_id,))
    return job_id, wid


def _claim_own(stack: Stack, job_id: str) -> dict[str, Any]:
    """Make this job's step due first in line and claim it, in one transaction."""
    with stack.db() as conn, conn.transaction():
        conn.execute("update workflow.job_steps set next_attempt_at = '-infinity'"
                     " where job_id = %s", (job_id,))
        cur = conn.execute("select * from workflow.claim_steps(1)")
        names = [c.name for c in cur.description or []]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    assert [str(r["job_id"]) for r in rows] == [job_id]
    return {**rows[0], "lease_token": str(rows[0]["lease_token"])}


def test_stale_and_duplicate_results_change_nothing(stack: Stack) -> None:
    job_id, _ = _pending_job(stack, hold=True)
    with _service(stack) as rpc:
        first = _claim_own(stack, job_id)
        # The lease expires (the executor hung); recovery makes it a failed, retryable attempt.
        stack.sql("update workflow.job_steps set lease_expires_at = now() - interval '1 s'"
                  " where job_id = %s", (job_id,))
        assert rpc.post("/recover_expired_leases", json={"p_limit": 1000}).json() >= 1
        second = _claim_own(stack, job_id)
        assert second["attempt"] == 2 and second["lease_token"] != first["lease_token"]

        def complete(token: str, output: Any) -> dict[str, Any]:
            return dict(rpc.post("/complete_step", json={
                "p_job_id": job_id, "p_step_id": "only", "p_lease_token": token,
                "p_output": output}).json())

        assert complete(first["lease_token"], {"late": True}) == {
            "accepted": False, "reason": "stale lease"}
        assert complete(second["lease_token"], {"ok": 1})["accepted"] is True
        assert complete(second["lease_token"], {"ok": 2})["accepted"] is False
        failed = rpc.post("/fail_step", json={
            "p_job_id": job_id, "p_step_id": "only", "p_lease_token": second["lease_token"],
            "p_error": "late failure", "p_retryable": False}).json()
        assert failed["accepted"] is False
    rows = stack.sql("select output, status, attempt from workflow.job_steps where job_id = %s",
                     (job_id,))
    assert rows == [({"ok": 1}, "completed", 2)]
    log = events(stack, job_id)
    assert [e["event_type"] for e in log].count("step_completed") == 1
    assert "step_retry_scheduled" in [e["event_type"] for e in log]


def test_a_job_keeps_the_definition_version_it_started_with(stack: Stack, api: Api) -> None:
    user = stack.create_user()
    wid = create_workflow(stack, {"steps": [{"id": "old", "transformer": "transform",
                                             "inputs": {"v": "old"}}]})
    job_id, _ = start(api, user, wid, {}), None
    stack.sql("update workflow.workflows set definition = %s where id = %s", (json.dumps(normalise(
        {"steps": [{"id": "new", "transformer": "transform", "inputs": {"v": "new"}}]})), wid))
    job = wait_job(api, user, job_id)
    assert job["status"] == "completed" and job["workflow_version"] == 1
    assert job["final_result"] == {"v": "old"}
    newer = wait_job(api, user, start(api, user, wid, {}))
    assert newer["workflow_version"] == 2 and newer["final_result"] == {"v": "new"}


def test_users_cancel_only_their_own_jobs(stack: Stack, api: Api) -> None:
    slow = failing_transformer(stack, attempts=99)
    user, other = stack.create_user(), stack.create_user()
    wid = create_workflow(stack, {"steps": [{"id": "s", "transformer": slow, "inputs": {},
                                             "retry": {"max_retries": 5, "initial_delay_s": 30}}]})
    job_id = start(api, user, wid, {})

    def cancel(token: str | None, target: str = job_id) -> httpx.Response:
        return api.request("POST", f"/jobs/{target}/cancel", token)

    assert cancel(other.token).status_code == 404
    assert cancel(None).status_code == 401
    assert cancel(user.token, "not-a-uuid").status_code == 400
    assert cancel(user.token, str(uuid.uuid4())).status_code == 404
    assert wait_job(api, user, job_id, timeout_s=0)["status"] != "cancelled"
    response = cancel(user.token)
    assert response.status_code == 200
    assert response.json() == {"job_id": job_id, "cancelled": True, "status": "cancelled"}
    job = wait_job(api, user, job_id)
    assert job["status"] == "cancelled" and job["steps"][0]["status"] == "cancelled"
    # Idempotent: a second cancel (a replay, or a job that finished) changes nothing.
    again = cancel(user.token)
    assert again.status_code == 200
    assert again.json() == {"job_id": job_id, "cancelled": False, "status": "cancelled"}
    assert_consistent_log(stack, job)
    assert [e["detail"].get("by") for e in events(stack, job_id)
            if e["event_type"] == "job_cancelled"] == [user.id]


def test_a_disconnected_caller_does_not_stop_the_orchestrator(stack: Stack, no_cron: None) -> None:
    """What start-workflow's kick relies on: it hangs up after sending."""
    job_id, _ = _pending_job(stack)  # created in SQL: nobody kicked an orchestrator
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{stack.api_url}/internal/orchestrator", json={"reason": "test"},
                   headers=stack.internal_headers(), timeout=httpx.Timeout(5.0, read=0.001))
    assert wait_status(stack, job_id, "completed") == "completed"


def test_orchestrator_requires_the_internal_credential(stack: Stack) -> None:
    url = f"{stack.api_url}/internal/orchestrator"
    assert httpx.post(url, json={}).status_code == 401
    assert httpx.post(url, json={}, headers={"Authorization": "Bearer nope"}).status_code == 401
    executor = f"{stack.api_url}/internal/executors/transform"
    assert httpx.post(executor, json={}, headers={"Authorization": "Bearer nope"}).status_code == 401
    summary = httpx.post(url, json={}, headers=stack.internal_headers(), timeout=90)
    assert summary.status_code == 200
    assert {"claimed", "dispatched", "completed", "failed", "recovered"} <= set(summary.json())


def test_pg_cron_schedule_reaches_the_orchestrator(stack: Stack, api: Api) -> None:
    (schedule,) = stack.sql("select schedule, command from cron.job"
                            " where jobname = 'supaflow-orchestrator'")
    assert schedule[0] == "* * * * *"
    job_id, _ = _pending_job(stack)  # created in SQL: nobody kicked an orchestrator
    request_id = stack.sql(str(schedule[1]))[0][0]
    status = net_response(stack, request_id)[0]
    assert status == 200 or status is None  # None: timed out, the pass goes on
    assert wait_status(stack, job_id, "completed") == "completed"


class _Receiver(BaseHTTPRequestHandler):
    calls: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.calls.append({"headers": dict(self.headers.items()), "body": body})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"received": true}')

    def log_message(self, *args: Any) -> None:
        pass


def test_webhook_call_is_signed_and_verifiable(stack: Stack, api: Api) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        hook = webhook_transformer(stack, f"http://127.0.0.1:{server.server_address[1]}/hook")
        _, job = run_workflow(stack, api, {"steps": [
            {"id": "notify", "transformer": hook,
             "inputs": {"body": {"order": "$.input.order", "note": "order {{ $.input.order }}"}}}
        ]}, {"order": 42})
    finally:
        server.shutdown()
    assert job["status"] == "completed", job
    assert job["final_result"] == {"status_code": 200, "response": {"received": True}}
    call = next(c for c in _Receiver.calls
                if c["headers"].get("X-Supaflow-Job-Id") == job["job_id"])
    assert json.loads(call["body"]) == {"order": 42, "note": "order 42"}
    assert verify_signature(stack.sec.webhook_secret, call["headers"]["X-Supaflow-Timestamp"],
                            call["body"], call["headers"]["X-Supaflow-Signature"])
    assert not verify_signature(stack.sec.webhook_secret, call["headers"]["X-Supaflow-Timestamp"],
                                call["body"] + b" ", call["headers"]["X-Supaflow-Signature"])


def test_download_refuses_metadata_addresses_and_oversized_files(stack: Stack, api: Api) -> None:
    small = add_transformer(stack, "http_download", {"bucket": "tests", "max_bytes": 1000})
    _, job = run_workflow(stack, api, {"steps": [
        {"id": "dl", "transformer": small, "inputs": {"url": "$.input.url"}}]},
        {"url": "http://169.254.169.254/latest/meta-data/"})
    assert job["status"] == "failed" and "169.254.169.254" in job["error_message"]
    assert job["steps"][0]["attempt"] == 1, "a refusal must not be retried"


def test_the_audio_transcription_example_runs_end_to_end(stack: Stack) -> None:
    httpx.post(f"{stack.cfg.gemini_url}/_control/reset")
    httpx.post(f"{stack.cfg.gemini_url}/_control/faults", json={"status": 429, "count": 1})
    done = run_demo(None, timeout_s=120, json_output=True)
    assert done.returncode == 0, done.stdout
    job = json.loads(done.stdout)
    assert job["status"] == "completed", job
    audio, transcript = job["final_result"]["audio"], job["final_result"]["transcript"]
    assert audio["sha256"] == hashlib.sha256(sine_wav()).hexdigest()
    s3 = boto3.client("s3", endpoint_url=stack.cfg.s3_url, aws_access_key_id="local",
                      aws_secret_access_key="local", region_name="us-east-1")
    stored = s3.get_object(Bucket=audio["bucket"], Key=audio["key"])["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == audio["sha256"]
    assert transcript["segments"] and {"start", "end", "text"} <= set(transcript["segments"][0])
    transcribe = next(s for s in job["steps"] if s["step_id"] == "transcribe")
    assert transcribe["attempt"] == 2, "the injected 429 was not retried"
    calls = httpx.get(f"{stack.cfg.gemini_url}/_control/requests").json()["requests"]
    inline = [p for c in calls for p in c["parts"] if p["kind"] == "inline_data"]
    assert {"mime_type": "audio/wav", "size": len(stored), "sha256": audio["sha256"]} in [
        {k: p[k] for k in ("mime_type", "size", "sha256")} for p in inline]


@pytest.mark.parametrize("count", [1])
def test_many_jobs_all_complete(stack: Stack, api: Api, count: int) -> None:
    user = stack.create_user()
    wid = create_workflow(stack, DIAMOND)
    ids = [start(api, user, wid, {"n": i}) for i in range(40 * count)]
    jobs = [wait_job(api, user, j, 60) for j in ids]
    assert [j["status"] for j in jobs] == ["completed"] * len(ids)
    assert sorted(j["final_result"]["input"] for j in jobs) == list(range(len(ids)))
    for job in jobs[:5]:
        assert_consistent_log(stack, job)
    assert uuid.UUID(jobs[0]["job_id"])


def test_next_due_in_is_null_without_ready_steps(stack: Stack) -> None:
    """An idle pass must not believe a retry is due (it would spin until its budget ends)."""
    with stack.db() as conn, conn.transaction(force_rollback=True):
        conn.execute("update workflow.job_steps set status = 'waiting' where status = 'ready'")
        assert conn.execute("select workflow.next_due_in()").fetchone() == (None,)
        conn.execute("update workflow.job_steps set status = 'ready',"
                     " next_attempt_at = now() + interval '1 hour'"
                     " where id = (select min(id) from workflow.job_steps)")
        row = conn.execute("select workflow.next_due_in()").fetchone()
    assert row is not None and 3500 < row[0] <= 3600


LINEAR = {"steps": [
    {"id": "one", "transformer": "transform", "inputs": {"text": "$.input.text"}},
    {"id": "two", "transformer": "transform", "inputs": {"upper": "{{ $.steps.one.output.text }}!"}},
    {"id": "three", "transformer": "transform",
     "inputs": {"both": ["$.steps.one.output.text", "$.steps.two.output.upper"]}},
]}


def test_a_three_step_job_completes_in_under_a_second(
    stack: Stack, api: Api, no_cron: None
) -> None:
    user = stack.create_user()
    wid = create_workflow(stack, LINEAR)
    wait_job(api, user, start(api, user, wid, {"text": "warm-up"}))  # imports, connections
    job = wait_job(api, user, start(api, user, wid, {"text": "hi"}))
    assert job["status"] == "completed", job
    assert job["final_result"] == {"both": ["hi", "hi!"]}
    assert job["step_data"] == {"one": {"text": "hi"}, "two": {"upper": "hi!"},
                                "three": {"both": ["hi", "hi!"]}}
    (took,) = stack.sql("select extract(epoch from completed_at - created_at)::float8"
                        " from workflow.jobs where id = %s", (job["job_id"],))[0]
    assert took < 1.0, f"start to completed took {took:.3f} s"
    log = assert_consistent_log(stack, job)
    assert [e["event_type"] for e in log] == [
        "job_created", "step_started", "job_running", "step_completed", "steps_ready",
        "step_started", "step_completed", "steps_ready", "step_started", "step_completed",
        "job_completed"]


def test_retry_delays_follow_the_policy(stack: Stack, api: Api) -> None:
    policy = {"max_retries": 3, "initial_delay_s": 0.3, "multiplier": 2, "max_delay_s": 10,
              "jitter": 0.2}
    flaky = failing_transformer(stack, attempts=2)
    _, job = run_workflow(stack, api, {"steps": [
        {"id": "s", "transformer": flaky, "inputs": {}, "retry": policy}]}, {})
    assert job["status"] == "completed" and job["steps"][0]["attempt"] == 3
    rows = stack.sql(
        "select event_type, attempt, created_at, (detail->>'next_attempt_at')::timestamptz"
        " from workflow.job_events where job_id = %s and step_id = 's' order by seq",
        (job["job_id"],))
    scheduled = [r for r in rows if r[0] == "step_retry_scheduled"]
    started = [r for r in rows if r[0] == "step_started"]
    assert [r[1] for r in started] == [1, 2, 3]
    for (_, attempt, at, due), nominal in zip(scheduled, (0.3, 0.6), strict=True):
        delay = (due - at).total_seconds()
        assert nominal * 0.8 - 0.01 <= delay <= nominal * 1.2 + 0.01, (attempt, delay)
        next_start = started[attempt][2]
        assert next_start >= due, "an attempt started before its backoff elapsed"


def test_two_orchestrators_dispatch_each_step_once(stack: Stack, no_cron: None) -> None:
    """200 steps become due at once and two passes race for them."""
    user = stack.create_user()
    wid = create_workflow(stack, {"steps": [{"id": "only", "transformer": "transform",
                                             "inputs": {"i": "$.input.i"}}]})
    with stack.db() as conn, conn.transaction():
        conn.execute("insert into workflow.rate_limits (user_id, max_starts, window_seconds)"
                     " values (%s, 1000, 60)", (user.id,))
        conn.execute("select workflow.start_job(%s, %s, 1, jsonb_build_object('i', i))"
                     " from generate_series(1, 200) i", (user.id, wid))
        conn.execute("update workflow.job_steps s set next_attempt_at = now() + interval '1 hour'"
                     " from workflow.jobs j where j.id = s.job_id and j.workflow_id = %s", (wid,))
    stack.sql("update workflow.job_steps s set next_attempt_at = now() from workflow.jobs j"
              " where j.id = s.job_id and j.workflow_id = %s", (wid,))

    def run_pass(_: int) -> dict[str, Any]:
        response = httpx.post(f"{stack.api_url}/internal/orchestrator", json={},
                              headers=stack.internal_headers(), timeout=120)
        assert response.status_code == 200, response.text
        return dict(response.json())

    with ThreadPoolExecutor(2) as pool:
        summaries = list(pool.map(run_pass, range(2)))
    rows = stack.sql(
        "select j.status, count(*) filter (where e.event_type = 'step_started'),"
        " count(*) filter (where e.event_type = 'step_completed'), max(e.attempt)"
        " from workflow.jobs j join workflow.job_events e on e.job_id = j.id"
        " where j.workflow_id = %s group by j.id, j.status", (wid,))
    assert len(rows) == 200
    assert set(rows) == {("completed", 1, 1, 1)}, summaries
    assert sum(s["claimed"] for s in summaries) <= 200


class _HeldReceiver(BaseHTTPRequestHandler):
    """A webhook that answers only when the test lets it: its step stays in flight until then."""

    arrived = threading.Event()
    release = threading.Event()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.arrived.set()
        self.release.wait(30)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


def _until_no_pass_is_alive(stack: Stack) -> None:
    """Passes of earlier tests linger a little: wait until none is alive, so that only
    what the test runs can claim what it creates (cron must be paused: no_cron)."""
    deadline = time.monotonic() + 15
    while stack.sql("select count(*) from workflow.orchestrator_passes where alive_until > now()")[0][0]:
        assert time.monotonic() < deadline, "other orchestrator passes did not end"
        time.sleep(0.1)


@contextmanager
def _pass_waiting_on_a_slow_step(stack: Stack) -> Iterator[tuple[str, Future[PassSummary]]]:
    """A kicked pass, in a thread, that has dispatched a one-step job whose webhook answers
    only when the block ends. Yields the job and the pass's future summary."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HeldReceiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _HeldReceiver.arrived.clear()
    _HeldReceiver.release.clear()
    hook = webhook_transformer(stack, f"http://127.0.0.1:{server.server_address[1]}/hook")
    _until_no_pass_is_alive(stack)
    slow_job, _ = _pending_job(stack, step={"id": "hook", "transformer": hook, "inputs": {"body": {}}})
    with ThreadPoolExecutor(1) as pool:
        draining = pool.submit(lambda: asyncio.run(
            run_pass(stack.api_url, 30, Knobs.from_settings(linger_s=0.5), kicked=True)))
        try:
            assert _HeldReceiver.arrived.wait(20), "the slow step was never dispatched"
            yield slow_job, draining
        finally:
            _HeldReceiver.release.set()
            draining.result(timeout=30)
            server.shutdown()
    assert wait_status(stack, slow_job, "completed") == "completed"


def test_a_pass_keeps_claiming_while_a_step_is_slow(
        stack: Stack, no_cron: None, function_env: None) -> None:
    """A job created while a pass waits on a slow step needs no kick: the pass polls,
    claims it, and completes it while the slow step is still in flight."""
    with _pass_waiting_on_a_slow_step(stack) as (slow_job, draining):
        assert stack.sql("select count(*) from workflow.orchestrator_passes"
                         " where alive_until > now()")[0][0] >= 1, "the pass is not alive"
        quick_job, _ = _pending_job(stack)  # created in SQL: nobody kicks
        assert wait_status(stack, quick_job, "completed", timeout_s=5) == "completed"
        assert stack.sql("select status from workflow.jobs where id = %s",
                         (slow_job,)) == [("running",)]
    summary = draining.result()
    assert summary.claimed == 2 and summary.completed == 2, summary


def test_a_start_that_saw_a_pass_alive_is_never_missed(stack: Stack) -> None:
    """A pass ends with end_pass, which waits for every start that saw it alive (and so
    did not kick) to commit; its last claim then finds that start's job."""
    user = stack.create_user()
    wid = create_workflow(stack, {"steps": [{"id": "only", "transformer": "transform"}]})
    pass_id = str(uuid.uuid4())
    stack.sql("insert into workflow.orchestrator_passes (id, alive_until)"
              " values (%s, now() + interval '1 minute')", (pass_id,))
    with stack.db() as starter:
        starter.autocommit = False
        started = starter.execute("select workflow.start_job(%s, %s, 1, '{}')", (user.id, wid)).fetchone()
        assert started is not None and started[0]["kick"] is False
        with ThreadPoolExecutor(1) as pool:
            ending = pool.submit(stack.sql, "select workflow.end_pass(%s)", (pass_id,))
            time.sleep(0.5)
            assert not ending.done(), "end_pass did not wait for the start that saw the pass"
            starter.commit()
            ending.result(timeout=10)
    assert stack.sql("select count(*) from workflow.orchestrator_passes where id = %s",
                     (pass_id,)) == [(0,)]


def test_an_output_mapping_that_cannot_resolve_fails_the_job(stack: Stack, api: Api) -> None:
    _, job = run_workflow(stack, api, {
        "steps": [{"id": "only", "transformer": "transform", "inputs": {"x": "$.input.x"}}],
        "output": {"y": "$.steps.only.output.y"}}, {"x": 1})
    assert job["status"] == "failed", job
    assert job["error_message"] == "output mapping: $.steps.only.output.y: no key 'y'"
    assert job["final_result"] is None and job["step_data"] == {"only": {"x": 1}}
    assert_consistent_log(stack, job)


def test_a_job_whose_finisher_died_is_finished_by_the_next_scheduled_pass(
        stack: Stack, no_cron: None) -> None:
    job_id, _ = _pending_job(stack, hold=True)
    claimed = _claim_own(stack, job_id)
    # The claim moved the job to running with its step current, in one row write.
    assert stack.sql("select status, current_step_id, jsonb_array_length(state_history)"
                     " from workflow.jobs where id = %s", (job_id,)) == [("running", "only", 2)]
    assert [e["event_type"] for e in events(stack, job_id)] == [
        "job_created", "step_started", "job_running"]
    with _service(stack) as rpc:  # an executor that records its step, then dies
        recorded = rpc.post("/complete_step", json={
            "p_job_id": job_id, "p_step_id": "only", "p_lease_token": claimed["lease_token"],
            "p_output": {"done": True}}).json()
    assert recorded["finish"]["job_id"] == job_id
    assert stack.sql("select status from workflow.jobs where id = %s", (job_id,)) == [("running",)]
    summary = httpx.post(f"{stack.api_url}/internal/orchestrator", json={},
                         headers=stack.internal_headers(), timeout=90).json()
    assert summary["jobs_finished"] >= 1, summary
    assert stack.sql("select status, final_result, current_step_id from workflow.jobs"
                     " where id = %s", (job_id,)) == [("completed", {"done": True}, None)]


def test_an_executor_batch_records_each_step_on_its_own_lease(stack: Stack) -> None:
    """One request, several steps: each outcome is fenced by its own lease token, so a
    stale one changes nothing and does not disturb the others."""
    (first, _), (second, _) = _pending_job(stack, hold=True), _pending_job(stack, hold=True)
    leases = {job: _claim_own(stack, job)["lease_token"] for job in (first, second)}
    route, current = faults.step_payload(stack, first, "only", leases[first], 1)
    _, stale = faults.step_payload(stack, second, "only", str(uuid.uuid4()), 1)
    response = httpx.post(f"{stack.api_url}{route}", json={"steps": [current, stale]},
                          headers=stack.internal_headers(), timeout=60)
    assert response.status_code == 200, response.text
    outcomes = {r["job_id"]: r["outcome"] for r in response.json()["results"]}
    assert outcomes == {first: "completed", second: "stale"}
    assert wait_status(stack, first, "completed") == "completed"
    assert stack.sql("select status from workflow.job_steps where job_id = %s", (second,)) == [
        ("running",)]


def test_claimed_steps_go_one_request_per_executor() -> None:
    """Steps for one executor share a request, whatever their timeouts (the default is
    300 s); a step that cannot be prepared is its own failure, not the batch's."""
    from shared import state
    from shared.orchestrator import Pass

    def step(i: int, target: str | None = "execute-transform", timeout_s: int = 10,
             payload: str = '{"inputs": {"i": "$.input.i"}, "input_data": {"i": 1}}') -> state.ClaimedStep:
        return state.ClaimedStep(job_id=str(uuid.uuid4()), step_id=f"s{i}", attempt=1,
                                 lease_token=str(uuid.uuid4()), timeout_s=timeout_s,
                                 transformer_id="t", transformer_type=target and "x",
                                 target_function=target, payload=payload)

    claimed = [step(1), step(2), step(3), step(4, timeout_s=300),
               step(5, "execute-webhook-call"), step(6, None),
               step(7, payload="[" * 5000 + "]" * 5000), step(8, payload='{"inputs": "$.steps.x.output"}')]
    batches, failures = Pass.batches(claimed)
    assert sorted((b.target, [s.step_id for s in b.steps]) for b in batches) == [
        ("execute-transform", ["s1", "s2", "s3", "s4"]), ("execute-webhook-call", ["s5"])]
    assert {f.step_id: f.retryable for f in failures} == {"s6": False, "s7": False, "s8": False}
    assert "unknown transformer" in next(f.error or "" for f in failures if f.step_id == "s6")
    assert "nested too deeply" in next(f.error or "" for f in failures if f.step_id == "s7")
    body = json.loads(next(b for b in batches if len(b.steps) == 4).body())
    assert [s["inputs"] for s in body["steps"]] == [{"i": 1}] * 4


def test_an_executor_runs_the_steps_its_steps_made_ready(stack: Stack, no_cron: None) -> None:
    """A chain of transform steps handed to the transform executor one step at a time:
    the executor claims each next step itself and answers for all three."""
    _until_no_pass_is_alive(stack)
    user = stack.create_user()
    wid = create_workflow(stack, {"steps": [
        {"id": "s0", "transformer": "transform", "inputs": {"n": "$.input.n"}},
        {"id": "s1", "transformer": "transform", "inputs": {"n": "$.steps.s0.output.n"}},
        {"id": "s2", "transformer": "transform", "inputs": {"n": "$.steps.s1.output.n"}}]})
    with stack.db() as conn, conn.transaction():
        row = conn.execute("select workflow.start_job(%s, %s, 1, '{\"n\": 7}')", (user.id, wid)).fetchone()
        assert row is not None
        job_id = str(row[0]["job_id"])
        conn.execute("update workflow.job_steps set next_attempt_at = now() + interval '1 hour'"
                     " where job_id = %s", (job_id,))
    lease = _claim_own(stack, job_id)["lease_token"]
    route, payload = faults.step_payload(stack, job_id, "s0", lease, 1)
    response = httpx.post(f"{stack.api_url}{route}", json={"steps": [payload]},
                          headers=stack.internal_headers(), timeout=60)
    assert response.status_code == 200, response.text
    assert [(r["step_id"], r["outcome"]) for r in response.json()["results"]] == [
        ("s0", "completed"), ("s1", "completed"), ("s2", "completed")]
    assert stack.sql("select status, final_result from workflow.jobs where id = %s", (job_id,)) == [
        ("completed", {"n": 7})]


def test_a_kicked_pass_ends_at_once_while_another_is_alive(
        stack: Stack, no_cron: None, function_env: None) -> None:
    """A burst of starts that found no pass alive sends a burst of kicks; only the first
    pass to begin claims (the others once ran their whole budget on empty claims)."""
    _until_no_pass_is_alive(stack)
    other = str(uuid.uuid4())
    stack.sql("insert into workflow.orchestrator_passes values (%s, now() + interval '60 s')",
              (other,))
    try:
        job_id, _ = _pending_job(stack)
        summary = asyncio.run(run_pass(stack.api_url, 30, Knobs.from_settings(), kicked=True))
        assert summary.skipped == 1 and summary.claimed == 0 and summary.duration_ms < 2000
        assert stack.sql("select status from workflow.jobs where id = %s", (job_id,))[0][0] == "pending"
    finally:
        stack.sql("delete from workflow.orchestrator_passes where id = %s", (other,))
    summary = asyncio.run(run_pass(stack.api_url, 30, Knobs.from_settings(), kicked=True))
    assert summary.skipped == 0 and summary.claimed >= 1
    assert wait_status(stack, job_id, "completed") == "completed"
