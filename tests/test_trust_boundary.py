"""The trust boundary (README: "The trust boundary"), tried as a hostile user would.

Each test pins one finding of the review that opened issue 9; each failed on the code
before the fix. Users write only through the functions; every value is bounded where it
enters; one bad row fails only its own step; every bad token is a 401 `invalid_token`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import httpx
import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from psycopg.types.json import Jsonb

from shared import start as start_module
from shared.auth import User as AuthUser
from supaflow_models import definitions
from testkit.api import Api
from testkit.jobs import run_workflow, start, wait_job
from testkit.stack import Stack, User
from testkit.workflows import add_transformer, create_workflow

ECHO = {"steps": [{"id": "echo", "transformer": "transform", "inputs": {"x": "$.input.x"}}]}
ECHO_STEP = definitions.normalise(ECHO)["steps"][0]  # as start_job copies it into job_steps


def nested(depth: int, leaf: Any = 1) -> Any:
    """`depth` levels of lists around `leaf`: nested(2) == [[1]]."""
    for _ in range(depth):
        leaf = [leaf]
    return leaf


def deep_json(depth: int) -> str:
    """The same value as JSON text (`%s::jsonb` in SQL), for rows no API would accept."""
    return "[" * depth + "]" * depth


def writes_of(stack: Stack, user: User) -> tuple[int, int]:
    """Jobs and events a user has: the witness that a refused request wrote nothing."""
    row = stack.sql(
        "select count(distinct j.id), count(e.id) from workflow.jobs j"
        " left join workflow.job_events e on e.job_id = j.id where j.user_id = %s", (user.id,))[0]
    return int(row[0]), int(row[1])


def rest(stack: Stack, method: str, path: str, token: str, **kwargs: Any) -> httpx.Response:
    """PostgREST directly, as supabase-js would call it with this token."""
    headers = {"apikey": stack.sec.anon_key, "Authorization": f"Bearer {token}",
               "Content-Profile": "workflow", "Accept-Profile": "workflow"}
    return httpx.request(method, f"{stack.api_url}/rest/v1{path}", headers=headers, timeout=30,
                         **kwargs)


# Finding 1: one user's row stalled everyone's jobs ------------------------------------


def test_a_poison_row_fails_only_its_own_step(stack: Stack, no_cron: None) -> None:
    """A row inserted as the service role with input 2,000 levels deep (the API and
    start_job refuse it; a direct write does not) is claimed first in the same batch as
    other users' jobs: it fails alone and permanently, the pass answers 200, and the
    others complete in that same pass. A finished job whose step outputs cannot be read
    fails alone in the pass's housekeeping too."""
    poisoner, others = stack.create_user(), [stack.create_user() for _ in range(3)]
    wid = create_workflow(stack, ECHO)
    with stack.db() as conn, conn.transaction():
        conn.execute("set local role service_role")
        poison = str(conn.execute(
            "insert into workflow.jobs (user_id, workflow_id, workflow_version, input_data)"
            " values (%s, %s, 1, jsonb_build_object('x', %s::jsonb)) returning id",
            (poisoner.id, wid, deep_json(2000))).fetchone()[0])  # type: ignore[index]
        conn.execute(
            "insert into workflow.job_steps (job_id, step_id, transformer_id, definition, status,"
            " next_attempt_at) values (%s, 'echo', 'transform', %s, 'ready', '-infinity')",
            (poison, Jsonb(ECHO_STEP)))
        stranded = str(conn.execute(
            "insert into workflow.jobs (user_id, workflow_id, workflow_version, status, step_data)"
            " values (%s, %s, 1, 'running', jsonb_build_object('echo', %s::jsonb)) returning id",
            (poisoner.id, wid, deep_json(2000))).fetchone()[0])  # type: ignore[index]
        conn.execute(
            "insert into workflow.job_steps (job_id, step_id, transformer_id, definition, status)"
            " values (%s, 'echo', 'transform', %s, 'completed')", (stranded, Jsonb(ECHO_STEP)))
        fine = [str(conn.execute("select workflow.start_job(%s, %s, 1, %s) ->> 'job_id'",
                                 (u.id, wid, Jsonb({"x": i}))).fetchone()[0])  # type: ignore[index]
                for i, u in enumerate(others)]

    response = httpx.post(f"{stack.api_url}/internal/orchestrator", json={"reason": "manual"},
                          headers=stack.internal_headers(), timeout=90)
    assert response.status_code == 200, response.text
    summary = response.json()
    assert summary["claimed"] >= 4 and summary["failed"] >= 1, summary

    rows = dict(stack.sql("select id::text, status from workflow.jobs where id = any(%s::uuid[])",
                          ([*fine, poison, stranded],)))
    assert [rows[j] for j in fine] == ["completed"] * 3, "other users' jobs waited for a lease"
    assert rows[poison] == "failed" and rows[stranded] == "failed"
    step = stack.sql("select status, attempt, error from workflow.job_steps where job_id = %s",
                     (poison,))[0]
    assert step[:2] == ("failed", 1), "a poison row must fail once, for good"
    assert "nested too deeply" in step[2]
    (message,) = stack.sql("select error_message from workflow.jobs where id = %s", (stranded,))[0]
    assert message.startswith("final result:") and "nested too deeply" in message


# Finding 2: start_job over RPC skipped every check --------------------------------------


WRITERS = [
    ("start_job", {"p_user_id": str(uuid.uuid4()), "p_workflow_id": "x",
                   "p_workflow_version": 1, "p_input": {}}),
    ("cancel_job", {"p_job_id": str(uuid.uuid4()), "p_claims": {"role": "service_role"}}),
    ("retry_job", {"p_job_id": str(uuid.uuid4()), "p_claims": {"role": "service_role"}}),
    ("start_workflow", {"p_workflow_id": "x", "p_input": {}}),
    ("put_draft", {"p_workflow_id": "x", "p_description": None, "p_definition": {},
                   "p_tenant_id": None, "p_claims": {"role": "service_role"}}),
    ("publish_workflow", {"p_workflow_id": "x", "p_expected_version": None,
                          "p_claims": {"role": "service_role"}}),
    ("deactivate_workflow", {"p_workflow_id": "x", "p_claims": {"role": "service_role"}}),
    ("put_transformer", {"p_transformer_id": "x", "p_type": "transform", "p_description": None,
                         "p_config": {}, "p_target_function": "execute-transform",
                         "p_tenant_id": None, "p_claims": {"role": "service_role"}}),
    ("put_webhook", {"p_webhook_id": "x", "p_workflow_id": "x", "p_signature": "standard",
                     "p_secret": None, "p_new_secret": "whsec_" + "A" * 44, "p_rotate": False,
                     "p_tolerance_s": 300, "p_headers": [], "p_input_mapping": None,
                     "p_owner": None, "p_status": "active", "p_claims": {"role": "service_role"}}),
    ("receive_webhook", {"p_webhook_id": "x", "p_delivery_id": "d", "p_input": {}}),
    ("webhook_for_delivery", {"p_webhook_id": "x"}),
    ("claim_steps", {"p_limit": 1}),
    ("complete_step", {"p_job_id": str(uuid.uuid4()), "p_step_id": "s",
                       "p_lease_token": str(uuid.uuid4()), "p_output": {}}),
    ("fail_job", {"p_job_id": str(uuid.uuid4()), "p_message": "x"}),
    ("recover_expired_leases", {"p_limit": 1}),
]


@pytest.mark.parametrize(("function", "params"), WRITERS)
def test_users_cannot_call_state_changing_sql(
        stack: Stack, function: str, params: dict[str, Any]) -> None:
    user = stack.create_user()
    wid = create_workflow(stack, ECHO)
    params = {**params, **({"p_workflow_id": wid} if "p_workflow_id" in params else {})}
    if "p_user_id" in params and function == "start_job":
        params["p_user_id"] = user.id
    before = writes_of(stack, user)
    for token in (user.token, stack.sec.anon_key):
        response = rest(stack, "POST", f"/rpc/{function}", token, json=params)
        # 42501 (permission denied): 403 for a signed-in user, 401 for anon.
        assert response.status_code in (401, 403), (function, response.text)
        assert response.json()["code"] == "42501", response.text
    assert writes_of(stack, user) == before


def test_no_workflow_function_is_executable_by_users(stack: Stack) -> None:
    """The sweep: whatever a migration adds, anon and authenticated execute none of it
    (reads go through the tables, under RLS), but the claim readers RLS itself calls."""
    rows = stack.sql(
        "select p.oid::regprocedure::text, r.rolname from pg_proc p"
        " join pg_namespace n on n.oid = p.pronamespace"
        " cross join (values ('anon'), ('authenticated')) r(rolname)"
        " where n.nspname = 'workflow' and has_function_privilege(r.rolname, p.oid, 'execute')"
        " order by 1")
    assert rows == [
        ("workflow.claims_admin(jsonb)", "authenticated"),
        ("workflow.claims_manage(jsonb,text)", "authenticated"),
        ("workflow.claims_reach(jsonb,text)", "authenticated"),
        ("workflow.claims_service(jsonb)", "authenticated"),
        ("workflow.claims_tenant(jsonb)", "authenticated"),
    ]
    functions = stack.sql("select count(*) from pg_proc p join pg_namespace n"
                          " on n.oid = p.pronamespace where n.nspname = 'workflow'")[0][0]
    assert functions > 10, "the sweep must see the schema's functions"


def _start_in_sql(stack: Stack, *args: Any) -> psycopg.Error:
    with stack.db() as conn, pytest.raises(psycopg.Error) as info:
        conn.execute("set role service_role")
        conn.execute("select workflow.start_job(%s, %s, %s, %s, %s)", args)
    return info.value


def test_start_job_itself_checks_what_it_is_given(stack: Stack) -> None:
    """The SQL entry point a trigger or schedule will call holds the bounds on its own."""
    user = stack.create_user()
    wid = create_workflow(stack, ECHO)
    # version 2 retires version 1
    stack.sql("update workflow.workflows set definition = %s where id = %s",
              (Jsonb(definitions.normalise({**ECHO, "output": {"v": 2}})), wid))
    cases: list[tuple[tuple[Any, ...], str, str]] = [
        ((user.id, wid, 2, Jsonb([1]), None), "PT400", "input_data: must be a JSON object"),
        ((user.id, wid, 2, Jsonb({"x": nested(64)}), None), "PT400",
         "input_data: nested more than 64 levels deep"),
        ((user.id, wid, 2, Jsonb({"x": "a" * (1024 * 1024)}), None), "PT400",
         "over the 1 MiB"),
        ((user.id, wid, 1, Jsonb({}), None), "PT409", "is at version 2, not 1"),
        ((user.id, "no-such-workflow", 1, Jsonb({}), None), "PT404", "not found"),
        ((None, wid, 2, Jsonb({}), None), "PT400", "a user id is required"),
    ]
    for args, sqlstate, message in cases:
        error = _start_in_sql(stack, *args)
        assert error.sqlstate == sqlstate and message in str(error), (args[2:], error)
    assert writes_of(stack, user) == (0, 0)
    # 63 levels inside input_data's own object is 64: exactly at the cap, accepted.
    stack.sql("select workflow.start_job(%s, %s, 2, %s)", (user.id, wid, Jsonb({"x": nested(63)})))
    assert writes_of(stack, user)[0] == 1


# Finding 3: tokens ------------------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _hs256(stack: Stack, header: bytes, payload: bytes) -> str:
    """A token signed with the project secret whose JSON PyJWT would never write."""
    signing_input = f"{_b64(header)}.{_b64(payload)}"
    mac = hmac.new(stack.sec.jwt_secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def _forged_tokens(stack: Stack, user: User) -> dict[str, str]:
    now = int(time.time())
    claims = {"sub": user.id, "aud": "authenticated", "role": "authenticated", "exp": now + 600}
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    es_header = _b64(json.dumps({"alg": "ES256", "kid": stack.sec.es256_kid}).encode())
    tokens = {
        # The JWKS's kid with a payload that is not JSON, or nested 3,000 deep: 500s once.
        "es256 kid, payload not json": f"{es_header}.{_b64(b'[1,')}.c2ln",
        "es256 kid, payload 3000 deep": f"{es_header}.{_b64(b'[' * 3000 + b']' * 3000)}.c2ln",
        # PyJWT computes int(exp): 1e400 is infinity, an OverflowError (a 500 once).
        "exp 1e400": _hs256(stack, b'{"alg":"HS256","typ":"JWT"}', (
            b'{"sub":"%s","aud":"authenticated","role":"authenticated","exp":1e400}'
            % user.id.encode())),
        # An RS256 header naming the JWKS's EC key: PyJWT raised TypeError (a 500).
        "rs256 with the ec kid": jwt.encode(claims, rsa_key, algorithm="RS256",
                                            headers={"kid": stack.sec.es256_kid}),
        "empty sub": stack.token(""),
        "sub not a uuid": stack.token("not-a-uuid"),
        "sub a urn": stack.token(f"urn:uuid:{user.id}"),
        "role anon": stack.token(user.id, role="anon"),
        "role postgres": stack.token(user.id, role="postgres"),
        "role service_role": stack.token(user.id, role="service_role"),
        "no role": jwt.encode({k: v for k, v in claims.items() if k != "role"},
                              stack.sec.jwt_secret, algorithm="HS256"),
    }
    return tokens


def test_every_bad_token_is_a_401_invalid_token(stack: Stack, api: Api) -> None:
    user = stack.create_user()
    wid = create_workflow(stack, ECHO)
    mine = start(api, user, wid, {"x": 1})
    assert wait_job(api, user, mine)["status"] == "completed"
    before = writes_of(stack, user)
    for name, token in _forged_tokens(stack, user).items():
        for method, path, body in (
                ("POST", "/workflows/start", {"workflow_id": wid, "input_data": {"x": 2}}),
                ("GET", "/jobs", None), ("GET", f"/jobs/{mine}", None),
                ("POST", f"/jobs/{mine}/cancel", None)):
            response = api.request(method, path, token, json=body)
            assert response.status_code == 401, (name, path, response.text)
            assert response.json()["error"]["code"] == "invalid_token", (name, path)
    assert writes_of(stack, user) == before

    # A real signature for a user that does not exist (deleted, say): reads find
    # nothing; a start, which would own a job, is refused (it once answered 502).
    ghost = stack.token(str(uuid.uuid4()))
    response = api.start(ghost, {"workflow_id": wid, "input_data": {"x": 2}})
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_token"
    assert api.request("GET", "/jobs", ghost).json()["jobs"] == []


# Smaller findings -----------------------------------------------------------------------


def test_deep_or_huge_input_is_a_400_that_names_the_problem(stack: Stack, api: Api) -> None:
    user = stack.create_user()
    wid = create_workflow(stack, ECHO)
    for depth, code, words in ((64, "invalid_input", "input_data: nested more than 64 levels"),
                               (200, "invalid_json", "nested more than 128 levels"),
                               (1500, "invalid_json", "nested more than 128 levels")):
        body = b'{"workflow_id": "%s", "input_data": {"x": %s1%s}}' % (
            wid.encode(), b"[" * depth, b"]" * depth)
        response = api.start(user.token, content=body)
        assert response.status_code == 400, (depth, response.text)
        assert response.json()["error"]["code"] == code and words in response.text, response.text
    assert api.start(user.token, content=b'{"workflow_id": "x", "input_data": ' + b"[" * 100_000
                     + b"]" * 100_000 + b"}").status_code == 400
    assert writes_of(stack, user) == (0, 0)


def test_an_output_over_the_bounds_fails_its_step_clearly(
        stack: Stack, api: Api, no_cron: None) -> None:
    """complete_step, as an executor calls it, with an output over 1 MiB; then a real
    transform step whose output nests deeper than its (accepted) input."""
    user = stack.create_user()
    wid = create_workflow(stack, {"steps": [{"id": "big", "transformer": "transform"}]})
    with stack.db() as conn, conn.transaction():
        conn.execute("set local role service_role")
        job_id = conn.execute("select workflow.start_job(%s, %s, 1, '{}') ->> 'job_id'",
                              (user.id, wid)).fetchone()[0]  # type: ignore[index]
        conn.execute("update workflow.job_steps set next_attempt_at = '-infinity' where job_id = %s",
                     (job_id,))
        claimed = conn.execute("select lease_token, job_id::text from workflow.claim_steps(1)").fetchall()
    assert len(claimed) == 1 and claimed[0][1] == job_id
    recorded = httpx.post(
        f"{stack.api_url}/rest/v1/rpc/complete_step", timeout=30,
        headers={**stack.service_headers(), "Content-Profile": "workflow"},
        json={"p_job_id": job_id, "p_step_id": "big", "p_lease_token": str(claimed[0][0]),
              "p_output": {"a": "x" * 600_000, "b": "y" * 600_000}})
    assert recorded.json() == {"accepted": True, "job_failed": True}, recorded.text
    step, job_error = stack.sql(
        "select s.status || ' ' || s.error, j.error_message from workflow.job_steps s"
        " join workflow.jobs j on j.id = s.job_id where s.job_id = %s", (job_id,))[0]
    assert step.startswith("failed the step's output is 1200") and "over the 1 MiB" in step
    assert "over the 1 MiB" in job_error
    # Through the executor: inputs of 1.2 MB reach it (an executor request may be 6 MiB,
    # a user's body 1 MiB), and the output it returns is over the bound.
    _, job = run_workflow(stack, api, {"steps": [{"id": "big", "transformer": "transform",
                                                  "inputs": {"a": "$.input.x", "b": "$.input.x"}}]},
                          {"x": "a" * 600_000})
    assert job["status"] == "failed" and job["steps"][0]["attempt"] == 1, job["error_message"]
    assert "the step's output is 1200" in job["error_message"], job["error_message"]
    _, job = run_workflow(stack, api, {"steps": [{"id": "deep", "transformer": "transform",
                                                  "inputs": {"a": {"b": {"c": "$.input.x"}}}}]},
                          {"x": nested(62)})
    assert job["status"] == "failed" and job["steps"][0]["attempt"] == 1
    assert "output is nested more than 64 levels deep" in job["error_message"]


def test_an_unusable_download_url_fails_once_for_good(stack: Stack, api: Api) -> None:
    download = add_transformer(stack, "http_download", {"bucket": "tests"})
    _, job = run_workflow(stack, api, {"steps": [
        {"id": "dl", "transformer": download, "inputs": {"url": "$.input.url"}}]},
        {"url": "http://0177.0.0.1/x.wav"})
    assert job["status"] == "failed", job
    assert job["steps"][0]["attempt"] == 1, "an unusable URL must not be retried"
    assert "unusable URL" in job["error_message"]


def test_idempotency_keys_are_per_workflow_and_input(stack: Stack, api: Api) -> None:
    user = stack.create_user()
    wid, other = create_workflow(stack, ECHO), create_workflow(stack, ECHO)

    def go(workflow: str, x: Any) -> httpx.Response:
        return api.start(user.token, {"workflow_id": workflow, "input_data": {"x": x},
                                      "idempotency_key": "order-17"})

    first = go(wid, {"b": 1, "a": 2})
    assert first.status_code == 202
    replay = go(wid, {"a": 2, "b": 1})  # the same input, keys in another order
    assert replay.status_code == 200 and replay.json()["job_id"] == first.json()["job_id"]
    conflict = go(wid, {"a": 3})
    assert conflict.status_code == 409, conflict.text
    assert conflict.json()["error"]["code"] == "idempotency_conflict"
    assert first.json()["job_id"] in conflict.json()["error"]["message"]
    # A key with a control character in the conflict's message: PostgREST sends PTxxx
    # messages as the HTTP reason phrase, where a raw CR broke the answer (503).
    first_cr = api.start(user.token, {"workflow_id": wid, "input_data": {"x": 1}, "idempotency_key": "a\rb"})
    assert first_cr.status_code == 202
    cr = api.start(user.token, {"workflow_id": wid, "input_data": {"x": 2}, "idempotency_key": "a\rb"})
    assert cr.status_code == 409 and cr.json()["error"]["code"] == "idempotency_conflict", cr.text
    elsewhere = go(other, {"a": 3})
    assert elsewhere.status_code == 202 and elsewhere.json()["job_id"] != first.json()["job_id"]
    assert writes_of(stack, user)[0] == 3


def test_a_start_after_a_publish_runs_the_new_version(stack: Stack, api: Api) -> None:
    """start-workflow remembers versions; start_job refuses a stale one and names the
    current one, so a start never runs a retired definition."""
    user = stack.create_user()
    wid = create_workflow(stack, {"steps": [{"id": "s", "transformer": "transform",
                                             "inputs": {"v": 1}}]})
    assert wait_job(api, user, start(api, user, wid, {}))["final_result"] == {"v": 1}
    stack.sql("update workflow.workflows set definition = %s where id = %s",
              (Jsonb(definitions.normalise(
                  {"steps": [{"id": "s", "transformer": "transform", "inputs": {"v": 2}}]})), wid))
    job = wait_job(api, user, start(api, user, wid, {}))
    assert job["workflow_version"] == 2 and job["final_result"] == {"v": 2}


def test_a_definition_is_parsed_once_per_version(
        stack: Stack, function_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[Any] = []

    def counting(raw: Any) -> Any:
        parsed.append(raw)
        return definitions.parse_definition(raw)

    monkeypatch.setattr("shared.start.parse_definition", counting)
    user = stack.create_user()
    wid = create_workflow(stack, ECHO)
    caller = AuthUser(user.id, user.token, {})
    for i in range(3):
        status, _ = start_module.start_job(caller, {"workflow_id": wid, "input_data": {"x": i}})
        assert status == 202
    assert len(parsed) == 1
    stack.sql("update workflow.workflows set definition = %s where id = %s",
              (Jsonb(definitions.normalise({**ECHO, "output": {"v": 2}})), wid))
    assert start_module.start_job(caller, {"workflow_id": wid, "input_data": {"x": 9}})[0] == 202
    assert len(parsed) == 2 and parsed[-1]["output"] == {"v": 2}


def test_a_stored_definition_too_deep_to_read_is_a_422(stack: Stack, api: Api) -> None:
    """The database refuses such a definition now (the definition check bounds it like any
    stored value); one stored before that, written with triggers off, is a 422 to start."""
    user = stack.create_user()
    wid = create_workflow(stack, ECHO)
    deepen = ("update workflow.workflows set definition = jsonb_set(definition,"
              " '{steps,0,inputs}', jsonb_build_object('deep', %s::jsonb)) where id = %s")
    with pytest.raises(psycopg.Error, match="nested more than 64 levels"):
        stack.sql(deepen, (deep_json(3000), wid))
    with stack.db() as conn, conn.transaction():
        conn.execute("set local session_replication_role = replica")
        conn.execute(deepen, (deep_json(3000), wid))
        conn.execute("update workflow.workflow_versions v set definition = w.definition"
                     " from workflow.workflows w where w.id = v.workflow_id and w.id = %s", (wid,))
    try:
        response = api.start(user.token, {"workflow_id": wid, "input_data": {}})
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "invalid_workflow"
        assert writes_of(stack, user) == (0, 0)
    finally:  # not left for other tests' lists
        stack.sql("delete from workflow.workflows where id = %s", (wid,))


def test_a_final_result_over_the_bounds_fails_the_job(stack: Stack, api: Api) -> None:
    """Two outputs within the bounds, combined by the output mapping, are not."""
    half = {"id": "a", "transformer": "transform", "depends_on": [], "inputs": {"v": "$.input.x"}}
    _, job = run_workflow(stack, api, {
        "steps": [half, {**half, "id": "b"}],
        "output": {"a": "$.steps.a.output", "b": "$.steps.b.output"}}, {"x": "z" * 600_000})
    assert job["status"] == "failed", job["status"]
    assert job["error_message"].startswith("the final result is 1200")
    assert [s["status"] for s in job["steps"]] == ["completed", "completed"]


def test_a_retried_start_gets_its_job_back_after_the_workflow_changed(
        stack: Stack, api: Api) -> None:
    """A start whose answer was lost is retried with its key: a newer input_schema or a
    deactivated workflow must not turn that replay into a 400 or 404."""
    user = stack.create_user()
    wid = create_workflow(stack, ECHO)
    body = {"workflow_id": wid, "input_data": {"x": 1}, "idempotency_key": "k-1"}
    first = api.start(user.token, body)
    assert first.status_code == 202
    stack.sql("update workflow.workflows set definition = %s where id = %s", (Jsonb(definitions.normalise({
        **ECHO, "input_schema": {"type": "object", "required": ["y"]}})), wid))
    for _ in range(2):  # either gateway worker, whatever version it remembers
        again = api.start(user.token, body)
        assert again.status_code == 200 and again.json()["job_id"] == first.json()["job_id"]
    fresh = api.start(user.token, {**body, "idempotency_key": "k-2"})
    assert fresh.status_code == 400 and "input_data.y" in fresh.text
    conflict = api.start(user.token, {**body, "input_data": {"x": 2}})
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "idempotency_conflict"
    stack.sql("update workflow.workflows set is_active = false where id = %s", (wid,))
    assert api.start(user.token, body).json()["job_id"] == first.json()["job_id"]
    assert api.start(user.token, {**body, "idempotency_key": "k-3"}).status_code == 404
    assert writes_of(stack, user)[0] == 1
