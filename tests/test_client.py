"""The Python client (client/supaflow_client/client.py) against the real stack: every
operation of docs/openapi.yaml has a method on both clients and calls that operation; a
workflow managed and its jobs started, waited for, listed, cancelled and retried through
it; the API's refusals as SupaflowError; a start retried through a PostgREST freeze makes
one job; the async client runs 200 jobs at once. Retry decisions that no stack produces on
demand (Retry-After, retries used up, requests unsafe to repeat) against httpx.MockTransport."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx
import pytest

from supaflow_client.client import (
    OPERATIONS,
    AsyncClient,
    Client,
    SupaflowError,
    SupaflowUnavailable,
)
from testkit.api import load_openapi
from testkit.faults import postgrest_stopped
from testkit.receiver import webhook_receiver
from testkit.stack import Stack, unlimited_starts
from testkit.workflows import WEBHOOK_SECRET_ENV, chain, create_workflow

N_SCHEMA = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}


def fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def state(job: dict[str, Any]) -> tuple[Any, ...]:
    """What wait() reports a change of: the status, each step's status and attempt."""
    return job["status"], tuple((s["step_id"], s["status"], s["attempt"]) for s in job["steps"])


def assert_progress(seen: list[dict[str, Any]], final: dict[str, Any]) -> None:
    """on_progress saw the job change, each call a different state, the last the end."""
    assert len(seen) >= 2 and seen[-1] == final
    states = [state(job) for job in seen]
    assert all(a != b for a, b in itertools.pairwise(states)), states


def jobs_of(stack: Stack, user_id: str) -> int:
    return int(stack.sql("select count(*) from workflow.jobs where user_id = %s", (user_id,))[0][0])


# The client and docs/openapi.yaml ------------------------------------------------------


def operations() -> dict[str, tuple[str, str]]:
    """operationId -> (HTTP method, path template), from docs/openapi.yaml."""
    found = {}
    for template, item in load_openapi()["paths"].items():
        for method, operation in item.items():
            # (x-client: false: a web page's routes, not an API for clients)
            if isinstance(operation, dict) and "operationId" in operation \
                    and operation.get("x-client", True):
                found[operation["operationId"]] = (method.upper(), template)
    return found


def test_every_operation_has_a_method() -> None:
    assert set(OPERATIONS) == set(operations())
    for name in [*OPERATIONS.values(), "start_many", "list_jobs", "job_events", "wait"]:
        sync, asynchronous = getattr(Client, name), getattr(AsyncClient, name)
        assert callable(sync) and not getattr(sync, "__isabstractmethod__", False), name
        assert inspect.signature(sync) == inspect.signature(asynchronous), name


def test_each_method_calls_its_operation() -> None:
    """Each method, called with placeholder arguments, sends the request of its operation."""
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={})

    client = mocked(answer)
    placeholders = {"job_id": str(uuid.uuid4()), "workflow_id": "wf", "transformer_id": "t",
                    "definition": {"steps": []}, "type": "transform", "config": {},
                    "trigger_id": "tr", "table": "public.t", "events": ["INSERT"],
                    "schedule_id": "sc", "cron": "* * * * *", "webhook_id": "wh",
                    "content": b"{}", "headers": {"webhook-id": "msg_1"},
                    "rule_id": "r", "kind": "failure_rate", "threshold": 0.5,
                    "window_s": 900}
    documented = operations()
    for operation_id, name in OPERATIONS.items():
        method = getattr(client, name)
        required = [p.name for p in inspect.signature(method).parameters.values()
                    if p.default is inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD]
        method(*[placeholders[p] for p in required])
        verb, template = documented[operation_id]
        pattern = "^/api" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        assert sent[-1].method == verb and re.match(pattern, sent[-1].url.path), (
            operation_id, sent[-1].method, sent[-1].url.path)


def test_each_method_takes_every_field_of_its_request_body() -> None:
    """A field the API takes and the client cannot send is a feature out of reach (a
    schedule's time zone, a trigger's phase)."""
    renamed = {"input": "input_data", "input_data": "input_data"}
    spec = load_openapi()
    for operation_id, name in OPERATIONS.items():
        verb, template = operations()[operation_id]
        body = spec["paths"][template][verb.lower()].get("requestBody", {})
        schema = body.get("content", {}).get("application/json", {}).get("schema", {})
        if "$ref" in schema:
            schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        fields = {renamed.get(f, f) for f in schema.get("properties", {})}
        params = set(inspect.signature(getattr(Client, name)).parameters)
        assert fields <= params, (operation_id, sorted(fields - params))


# End to end ----------------------------------------------------------------------------


def test_a_workflow_managed_and_its_jobs_run_through_the_client(stack: Stack) -> None:
    user = stack.create_user()
    flaky, slow, wid = fresh("t-flaky"), fresh("t-slow"), fresh("wf")
    definition = {"input_schema": N_SCHEMA, "output": {"n": "$.steps.s2.output.n"}, "steps": [
        {"id": "s1", "transformer": slow, "inputs": {"n": "$.input.n"}},
        {"id": "s2", "transformer": flaky, "inputs": {"n": "$.input.n"}}]}
    with webhook_receiver() as receiver, Client(stack.api_url, stack.sec.service_role_key) as admin, \
            Client(stack.api_url, user.token) as client:
        # The service role manages the transformers and the workflow.
        created = admin.put_transformer(flaky, "transform", {"fail": {"retryable": False, "message": "down"}},
                                        description="fails until fixed")
        assert created["created"] is True and created["target_function"] == "execute-transform"
        admin.put_transformer(slow, "webhook_call", {
            "url": receiver.url("/slow/700"), "secret_env_var": WEBHOOK_SECRET_ENV})
        assert {flaky, slow} <= {t["transformer_id"] for t in admin.list_transformers()["transformers"]}

        draft = admin.put_workflow(wid, definition, description="slow, then flaky")
        assert draft["version"] is None and draft["draft"]["description"] == "slow, then flaky"
        assert admin.publish_workflow(wid, expected_version=0, draft_revision=draft["draft"]["revision"]) \
            == {"workflow_id": wid, "version": 1, "new_version": True}
        shown = admin.get_workflow(wid)
        assert shown["active"] is True and shown["draft"] is None
        assert [v["version"] for v in shown["versions"]] == [1]
        assert wid in [w["workflow_id"] for w in admin.list_workflows()["workflows"]]
        assert wid in [w["workflow_id"] for w in client.list_workflows()["workflows"]]
        assert client.get_workflow(wid)["input_schema"] == N_SCHEMA

        # A user starts a job (the same key: the same job), cancels it mid-step, retries it:
        # the flaky step fails it; once the transformer is fixed, a retry completes it.
        key = uuid.uuid4().hex
        job_id = client.start(wid, {"n": 7}, idempotency_key=key)["job_id"]
        assert client.start(wid, {"n": 7}, idempotency_key=key)["job_id"] == job_id
        assert client.cancel_job(job_id) == {"job_id": job_id, "cancelled": True, "status": "cancelled"}
        assert client.cancel_job(job_id) == {"job_id": job_id, "cancelled": False, "status": "cancelled"}
        assert client.retry_job(job_id) == {"job_id": job_id, "status": "pending",
                                            "retried_steps": ["s1", "s2"]}
        seen: list[dict[str, Any]] = []
        failed = client.wait(job_id, timeout=30, poll_s=0.05, on_progress=seen.append)
        assert failed["status"] == "failed" and "down" in failed["error_message"]
        assert_progress(seen, failed)
        assert ("s1", "running", 1) in [step for job in seen for step in state(job)[1]]

        assert admin.put_transformer(flaky, "transform", {})["created"] is False
        assert client.retry_job(job_id)["retried_steps"] == ["s2"]
        seen = []
        done = client.wait(job_id, timeout=30, poll_s=0.05, on_progress=seen.append)
        assert done["status"] == "completed" and done["final_result"] == {"n": 7}
        assert_progress(seen, done)
        with pytest.raises(SupaflowError) as again:
            client.retry_job(job_id)
        assert (again.value.status, again.value.code) == (409, "not_retryable")

        # Its event log, whole and in order, however it is paged.
        events = list(client.job_events(job_id))
        logged = stack.sql("select seq, event_type, step_id from workflow.job_events"
                           " where job_id = %s order by seq", (job_id,))
        assert [(e["seq"], e["event_type"], e["step_id"]) for e in events] == [tuple(r) for r in logged]
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert events[0]["event_type"] == "job_created"
        assert "job_cancelled" in [e["event_type"] for e in events]
        assert list(client.job_events(job_id, page_size=3)) == events
        assert list(client.job_events(job_id, after=5)) == events[5:]
        page = client.job_events_page(job_id, limit=3)
        assert page["events"] == events[:3] and page["next_after"] == 3

        # A batch (a generated key for each item without one; a used key: the existing job),
        # then every job listed, two a page.
        batch = client.start_many([{"workflow_id": wid, "input_data": {"n": n}} for n in range(5)]
                                  + [{"workflow_id": wid, "input_data": {"n": 7}, "idempotency_key": key}])
        assert [r["outcome"] for r in batch["results"]] == ["created"] * 5 + ["existing"]
        assert batch["results"][5]["job_id"] == job_id
        new = [r["job_id"] for r in batch["results"][:5]]
        with pytest.raises(TimeoutError):
            client.wait(new[0], timeout=0.2, poll_s=0.05)  # its slow step takes 0.7 s
        assert [client.wait(j, timeout=30)["final_result"] for j in new] == [{"n": n} for n in range(5)]

        listed = list(client.list_jobs(workflow_id=wid, page_size=2))
        assert {j["job_id"] for j in listed} == {job_id, *new} and len(listed) == 6
        assert [j["created_at"] for j in listed] == sorted((j["created_at"] for j in listed), reverse=True)
        first = client.list_jobs_page(workflow_id=wid, limit=2)
        assert first["next_cursor"] and first["jobs"] == listed[:2]
        second = client.list_jobs_page(workflow_id=wid, limit=2, cursor=first["next_cursor"])
        assert second["jobs"] == listed[2:4]
        assert list(client.list_jobs(workflow_id=wid, status="completed", page_size=4)) == listed
        assert list(client.list_jobs(workflow_id=wid, status="failed")) == []
        # The batch's jobs share a created_at (one transaction): after it (inclusive) and before it.
        batch_at = datetime.fromisoformat(listed[0]["created_at"])
        assert {j["job_id"] for j in client.list_jobs(created_after=batch_at)} == set(new)
        assert list(client.list_jobs(created_before=listed[0]["created_at"])) == listed[5:]

        # Deactivated: new starts are a 404, and users no longer see it.
        assert admin.delete_workflow(wid) == {"workflow_id": wid, "version": 1, "active": False}
        with pytest.raises(SupaflowError) as gone:
            client.start(wid, {"n": 1})
        assert (gone.value.status, gone.value.code) == (404, "not_found")
        assert wid not in [w["workflow_id"] for w in client.list_workflows()["workflows"]]
    assert client.http.is_closed and admin.http.is_closed


# Refusals ------------------------------------------------------------------------------


def test_refusals_raise_supaflow_error_with_the_apis_code_and_message(stack: Stack) -> None:
    user = stack.create_user()
    wid = create_workflow(stack, {**chain(1), "input_schema": N_SCHEMA})
    missing = str(uuid.uuid4())
    sent: list[httpx.Request] = []
    with Client(stack.api_url, user.token) as client, Client(stack.api_url, "not-a-jwt") as forged, \
            Client(stack.api_url) as anonymous:
        for c in (client, forged, anonymous):
            c.http.event_hooks["request"].append(sent.append)
        cases: list[tuple[Callable[[], object], int, str, str]] = [
            (lambda: client.get_job(missing), 404, "not_found", f"job {missing} not found"),
            (lambda: client.get_job("not-a-uuid"), 400, "bad_request", "job id 'not-a-uuid' is not a UUID"),
            (lambda: client.start(wid, {"n": "seven"}), 400, "invalid_input",
             "input_data.n: 'seven' is not of type 'integer'"),
            (lambda: client.list_jobs_page(limit=0), 400, "bad_request",
             "limit must be an integer from 1 to 200"),
            (lambda: client.put_workflow(wid, chain(1)), 403, "forbidden", ""),
            (lambda: forged.list_workflows(), 401, "invalid_token", "malformed token"),
            (lambda: anonymous.get_job(missing), 401, "unauthorized", "missing bearer token"),
        ]
        for call, status, code, message in cases:
            sent.clear()
            with pytest.raises(SupaflowError) as refused:
                call()
            error = refused.value
            assert not isinstance(error, SupaflowUnavailable)
            assert (error.status, error.code) == (status, code), str(error)
            assert message in error.message and str(error) == f"{status} {code}: {error.message}"
            assert len(sent) == 1, "a refusal is not retried"
    made = jobs_of(stack, user.id)
    assert made == 0


# Retries -------------------------------------------------------------------------------


def test_a_start_through_a_postgrest_freeze_makes_one_job(stack: Stack) -> None:
    """While PostgREST is frozen a start hangs (its function waits on PostgREST): the
    client's attempts time out and are retried with the same idempotency key. The abandoned
    attempts still run when PostgREST comes back; the key makes them all one job. health()
    answers the freeze's 503 (its own check gives up after 3 s) without raising."""
    user = stack.create_user()
    wid = create_workflow(stack, chain(1))
    keys: list[str] = []

    def record(request: httpx.Request) -> None:
        if request.url.path.endswith("/workflows/start"):
            keys.append(json.loads(request.content).get("idempotency_key"))

    frozen = threading.Event()

    def freeze() -> None:
        with postgrest_stopped(stack.cfg):
            frozen.set()
            time.sleep(3.6)

    with Client(stack.api_url, user.token, timeout=1.0, retries=6, backoff_s=0.3) as client, \
            Client(stack.api_url) as anonymous, ThreadPoolExecutor(2) as pool:
        client.http.event_hooks["request"].append(record)
        freezer = pool.submit(freeze)
        assert frozen.wait(10)
        since = time.monotonic()
        health = pool.submit(anonymous.health)
        started = client.start(wid, {"n": 4})
        assert time.monotonic() - since > 3, "no start can succeed while PostgREST is frozen"
        freezer.result()
        assert health.result() == {"status": "unhealthy", "checks": {
            "database": {"ok": False, "detail": "the database API is unreachable"}}}
        assert client.wait(started["job_id"], timeout=30)["final_result"] == {"n": 4}
        assert client.health()["status"] == "ok"
    made = jobs_of(stack, user.id)
    assert made == 1
    assert len(keys) >= 3 and len(set(keys)) == 1 and re.fullmatch(r"[0-9a-f]{32}", str(keys[0]))


def mocked(handler: Callable[[httpx.Request], httpx.Response], **options: Any) -> Client:
    """A Client whose requests `handler` answers (httpx.MockTransport)."""
    client = Client("http://supaflow.test/api", "the-token", **options)
    client.http.close()
    client.http = httpx.Client(base_url=client.url, transport=httpx.MockTransport(handler))
    return client


def mocked_async(handler: Callable[[httpx.Request], httpx.Response], **options: Any) -> AsyncClient:
    client = AsyncClient("http://supaflow.test/api", "the-token", **options)
    client.http = httpx.AsyncClient(base_url=client.url, transport=httpx.MockTransport(handler))
    return client


class Script:
    """Answers requests in turn from a list (an httpx.Response, or an exception to raise),
    recording each request and when it came."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.times: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.times.append(time.monotonic())
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def gaps(self) -> list[float]:
        return [b - a for a, b in itertools.pairwise(self.times)]


UNAVAILABLE = {"error": {"code": "unavailable", "message": "the database API is unavailable; retry shortly"}}


def test_503s_and_lost_connections_are_retried_after_retry_after_or_the_backoff() -> None:
    script = Script(httpx.Response(503, json=UNAVAILABLE, headers={"Retry-After": "1"}),
                    httpx.ConnectError("refused"), httpx.Response(503, json=UNAVAILABLE),
                    httpx.Response(200, json={"job_id": "j", "status": "running"}))
    with mocked(script, retries=4, backoff_s=0.05) as client:
        assert client.get_job("j") == {"job_id": "j", "status": "running"}
    one, two, three = script.gaps()
    assert 1.0 <= one < 1.5, "Retry-After: 1"
    assert 0.1 <= two < 0.5 and 0.2 <= three < 0.6, "0.05 * 2**1, 0.05 * 2**2"
    assert all(r.headers["authorization"] == "Bearer the-token" for r in script.requests)
    assert script.requests[0].url == "http://supaflow.test/api/jobs/j"


@pytest.mark.parametrize("failure", [httpx.Response(503, json=UNAVAILABLE), httpx.ReadTimeout("slow")])
def test_when_the_retries_are_used_up_it_raises_supaflow_unavailable(
        failure: httpx.Response | Exception) -> None:
    script = Script(failure)
    with mocked(script, retries=2, backoff_s=0.01) as client, pytest.raises(SupaflowUnavailable) as raised:
        client.list_workflows()
    assert len(script.requests) == 3
    error = raised.value
    assert (error.status, error.code) == (503, "unavailable") and isinstance(error, SupaflowError)
    if isinstance(failure, Exception):
        assert error.__cause__ is failure and "ReadTimeout" in error.message
    else:
        assert error.message == UNAVAILABLE["error"]["message"]


def test_only_requests_safe_to_repeat_are_retried() -> None:
    # A publish without an expected version is not sent twice; with one it is.
    script = Script(httpx.Response(503, json=UNAVAILABLE))
    with mocked(script, retries=2, backoff_s=0.01) as client:
        with pytest.raises(SupaflowUnavailable):
            client.publish_workflow("wf")
        assert len(script.requests) == 1 and script.requests[0].content == b""
        with pytest.raises(SupaflowUnavailable):
            client.publish_workflow("wf", expected_version=3)
        assert len(script.requests) == 4
        assert json.loads(script.requests[-1].content) == {"expected_version": 3}
        # A start always carries a key, the same on every attempt; a batch's items each their own.
        script.requests.clear()
        with pytest.raises(SupaflowUnavailable):
            client.start("wf", {"n": 1})
        bodies = [json.loads(r.content) for r in script.requests]
        assert len(bodies) == 3 and bodies[0] == bodies[1] == bodies[2]
        assert re.fullmatch(r"[0-9a-f]{32}", bodies[0]["idempotency_key"])
        assert bodies[0] == {"workflow_id": "wf", "input_data": {"n": 1},
                             "idempotency_key": bodies[0]["idempotency_key"]}
        script.requests.clear()
        with pytest.raises(SupaflowUnavailable):
            client.start_many([{"workflow_id": "a"}, {"workflow_id": "b", "idempotency_key": "mine"},
                               {"workflow_id": "c", "input_data": {}}])
        bodies = [json.loads(r.content) for r in script.requests]
        assert len(bodies) == 3 and bodies[0] == bodies[2]
        keys = [item["idempotency_key"] for item in bodies[0]["jobs"]]
        assert keys[1] == "mine" and len(set(keys)) == 3


def test_health_answers_its_503_and_other_answers_decode_to_errors() -> None:
    unhealthy = {"status": "unhealthy", "checks": {"database": {"ok": False}}}
    script = Script(httpx.Response(503, json=unhealthy),
                    httpx.Response(502, text="<html>Bad Gateway</html>"),
                    httpx.Response(200, text="not json"))
    with mocked(script, retries=3, backoff_s=0.01) as client:
        assert client.health() == unhealthy
        assert "authorization" not in script.requests[0].headers, "health takes no token"
        with pytest.raises(SupaflowError) as bad_gateway:
            client.get_job("j")
        assert (bad_gateway.value.status, bad_gateway.value.code) == (502, "http_502")
        assert bad_gateway.value.message == "<html>Bad Gateway</html>"
        with pytest.raises(SupaflowError) as garbled:
            client.get_job("j")
        assert (garbled.value.status, garbled.value.code) == (200, "invalid_response")
    assert len(script.requests) == 3


def test_the_async_client_retries_alike_and_awaits_an_async_progress_callback() -> None:
    def job(status: str, attempt: int) -> httpx.Response:
        return httpx.Response(200, json={"job_id": "j", "status": status, "steps": [
            {"step_id": "s1", "status": "completed" if status == "completed" else "running",
             "attempt": attempt}]})

    # Unchanged, then a new attempt of the step (the job still running), then the end.
    script = Script(httpx.Response(503, json=UNAVAILABLE), httpx.ConnectError("refused"),
                    job("running", 1), job("running", 1), job("running", 2), job("completed", 2))
    seen: list[tuple[str, int]] = []

    async def progress(job: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        seen.append((job["status"], job["steps"][0]["attempt"]))

    async def main() -> dict[str, Any]:
        async with mocked_async(script, retries=2, backoff_s=0.01) as client:
            return await client.wait("j", poll_s=0.01, on_progress=progress)

    assert asyncio.run(main())["status"] == "completed"
    assert seen == [("running", 1), ("running", 2), ("completed", 2)] and len(script.requests) == 6


# The async client at scale -------------------------------------------------------------


def test_async_client_starts_200_jobs_concurrently_and_waits_for_all(stack: Stack) -> None:
    user = stack.create_user()
    unlimited_starts(stack, user)
    wid = create_workflow(stack, {**chain(2), "input_schema": N_SCHEMA})

    async def main() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        gate = asyncio.Semaphore(32)
        async with AsyncClient(stack.api_url, user.token) as client:
            async def start(n: int) -> str:
                async with gate:
                    return str((await client.start(wid, {"n": n}))["job_id"])

            async def wait(job_id: str) -> dict[str, Any]:
                async with gate:
                    return await client.wait(job_id, timeout=120, poll_s=0.2)

            job_ids = await asyncio.gather(*(start(n) for n in range(200)))
            finals = await asyncio.gather(*(wait(j) for j in job_ids))
            listed = [job async for job in client.list_jobs(workflow_id=wid, page_size=64)]
        return finals, listed

    finals, listed = asyncio.run(main())
    assert [(j["status"], j["final_result"]) for j in finals] == [("completed", {"n": n}) for n in range(200)]
    made = jobs_of(stack, user.id)
    assert len({j["job_id"] for j in finals}) == 200 == made
    assert {j["job_id"] for j in listed} == {j["job_id"] for j in finals}
