"""The user API through the gateway: start, get and list jobs behind Supabase JWTs."""

from __future__ import annotations

import base64
import importlib.util
import json
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from postgrest.exceptions import APIError

from shared import db
from shared.settings import settings
from stack.config import REPO
from testkit.api import Api
from testkit.stack import Stack, User
from testkit.workflows import create_workflow

NAMED_INPUT = {
    "steps": [{"id": "only", "transformer": "transform", "inputs": {"name": "$.input.name"}}],
    "input_schema": {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string"},
            "options": {"type": "object", "properties": {"speed": {"type": "integer"}}},
        },
    },
}


@pytest.fixture
def workflow(stack: Stack) -> str:
    return create_workflow(stack, NAMED_INPUT)


def job_count(stack: Stack, user: User) -> int:
    return int(stack.sql("select count(*) from workflow.jobs where user_id = %s", (user.id,))[0][0])


def start_ok(api: Api, user: User, workflow: str, **extra: Any) -> dict[str, Any]:
    response = api.start(user.token, {"workflow_id": workflow, "input_data": {"name": "n"}, **extra})
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def test_two_users_see_only_their_own_jobs(stack: Stack, api: Api, workflow: str) -> None:
    alice, bob = stack.create_user(), stack.create_user()
    a = start_ok(api, alice, workflow)
    b = start_ok(api, bob, workflow)
    assert a["status"] == "pending" and a["job_id"] != b["job_id"]

    got = api.request("GET", f"/jobs/{a['job_id']}", alice.token)
    assert got.status_code == 200
    job = got.json()
    assert job["job_id"] == a["job_id"] and job["workflow_id"] == workflow
    assert job["input_data"] == {"name": "n"}
    assert [s["step_id"] for s in job["steps"]] == ["only"]
    assert job["steps"][0]["status"] in ("ready", "running", "completed")

    # Another user's job does not exist for you, whichever way you ask.
    assert api.request("GET", f"/jobs/{a['job_id']}", bob.token).status_code == 404
    listed = api.request("GET", "/jobs", bob.token, params={"workflow_id": workflow}).json()
    assert [j["job_id"] for j in listed["jobs"]] == [b["job_id"]]
    direct = httpx.get(
        f"{stack.api_url}/rest/v1/jobs", params={"select": "id", "workflow_id": f"eq.{workflow}"},
        headers={"apikey": stack.sec.anon_key, "Authorization": f"Bearer {bob.token}",
                 "Accept-Profile": "workflow"},
    )
    assert direct.status_code == 200 and [r["id"] for r in direct.json()] == [b["job_id"]]


def test_bad_requests_get_clear_errors_and_write_nothing(
    stack: Stack, api: Api, workflow: str
) -> None:
    user = stack.create_user()
    inactive = create_workflow(stack, NAMED_INPUT, active=False)
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"content": b'{"workflow_id": '}, 400, "invalid_json"),
        ({"content": b"[1, 2]"}, 400, "invalid_json"),
        ({"content": b""}, 400, "invalid_json"),
        ({"json": {"workflow_id": 42, "input_data": {}}}, 400, "bad_request"),
        ({"json": {"workflow_id": workflow, "input_data": []}}, 400, "bad_request"),
        ({"json": {"workflow_id": workflow, "input_data": {}, "extra": 1}}, 400, "bad_request"),
        ({"json": {"workflow_id": workflow, "input_data": {"name": 3}}}, 400, "invalid_input"),
        ({"json": {"workflow_id": workflow, "input_data": {}}}, 400, "invalid_input"),
        ({"json": {"workflow_id": "no-such-workflow", "input_data": {}}}, 404, "not_found"),
        # Found by the fuzz: a control character cannot travel in PostgREST's URL (was 503).
        ({"json": {"workflow_id": "\r", "input_data": {}, "idempotency_key": "0"}}, 400, "bad_request"),
        ({"json": {"workflow_id": "a\nb", "input_data": {}}}, 400, "bad_request"),
        ({"json": {"workflow_id": inactive, "input_data": {"name": "n"}}}, 404, "not_found"),
        ({"content": b'{"workflow_id": "x", "input_data": {"pad": "' + b"a" * (1024 * 1024) + b'"}}'},
         413, "payload_too_large"),
    ]
    for kwargs, status, code in cases:
        response = api.start(user.token, **kwargs)
        assert response.status_code == status, (kwargs.keys(), response.text)
        assert response.json()["error"]["code"] == code, response.text
    named = api.start(user.token, {"workflow_id": workflow, "input_data": {"name": 3}}).json()
    assert "input_data.name" in named["error"]["message"]
    nested = api.start(user.token, {"workflow_id": workflow,
                                    "input_data": {"name": "n", "options": {"speed": "fast"}}})
    assert nested.status_code == 400 and "input_data.options.speed" in nested.text

    for token, code in ((None, "unauthorized"), ("not-a-jwt", "invalid_token"),
                        (stack.token(user.id, exp_in=-300), "invalid_token")):
        response = api.start(token, {"workflow_id": workflow, "input_data": {"name": "n"}})
        assert response.status_code == 401 and response.json()["error"]["code"] == code

    assert api.request("GET", "/jobs/not-a-uuid", user.token).status_code == 400
    assert api.request("GET", f"/jobs/{uuid.uuid4()}", user.token).status_code == 404
    assert api.request("GET", f"/jobs/{uuid.uuid4()}").status_code == 401
    assert api.request("GET", "/jobs").status_code == 401
    def cursor(created_at: str) -> dict[str, str]:
        raw = json.dumps([created_at, str(uuid.uuid4())]).encode()
        return {"cursor": base64.urlsafe_b64encode(raw).decode()}

    # Cursors with a timestamp Postgres cannot read (found by the fuzz test: "0" was a 502).
    # Superscript two and Arabic-Indic one are digits to str.isdigit(); the first once
    # answered 500 (int() refuses it).
    for params in ({"limit": "0"}, {"limit": "201"}, {"limit": "x"}, {"limit": "\u00b2"},
                   {"limit": "\u0661"}, {"limit": " 5"}, {"status": "done"}, {"workflow_id": "a\rb"},
                   {"cursor": "%%%"}, {"cursor": base64.urlsafe_b64encode(b'["x", 1]').decode()},
                   cursor("0"), cursor("2026-13-01T00:00:00+00:00"), cursor("2026-11-24T00:00:00"),
                   {"cursor": base64.urlsafe_b64encode(b"[" * 4000).decode()},  # was a 500
                   {"bogus": "1"}):
        response = api.request("GET", "/jobs", user.token, params=params)
        assert response.status_code == 400, (params, response.text)
    assert job_count(stack, user) == 0


def test_idempotency_key_returns_the_same_job(stack: Stack, api: Api, workflow: str) -> None:
    user, other = stack.create_user(), stack.create_user()
    first = start_ok(api, user, workflow, idempotency_key="order-17")
    again = api.start(user.token, {"workflow_id": workflow, "input_data": {"name": "n"},
                                   "idempotency_key": "order-17"})
    assert again.status_code == 200 and again.json()["job_id"] == first["job_id"]
    theirs = start_ok(api, other, workflow, idempotency_key="order-17")
    assert theirs["job_id"] != first["job_id"]
    assert job_count(stack, user) == 1 and job_count(stack, other) == 1


def test_rate_limit_answers_429_then_recovers(stack: Stack, api: Api, workflow: str) -> None:
    user = stack.create_user()
    stack.sql("insert into workflow.rate_limits (user_id, max_starts, window_seconds)"
              " values (%s, 3, 3)", (user.id,))
    for _ in range(3):
        start_ok(api, user, workflow)
    limited = api.start(user.token, {"workflow_id": workflow, "input_data": {"name": "n"}})
    assert limited.status_code == 429, limited.text
    assert limited.json()["error"]["code"] == "rate_limited"
    retry_after = int(limited.headers["Retry-After"])
    assert 1 <= retry_after <= 3
    assert job_count(stack, user) == 3
    time.sleep(retry_after + 0.5)
    start_ok(api, user, workflow)
    assert job_count(stack, user) == 4


def test_accepted_and_refused_tokens(stack: Stack, api: Api, workflow: str) -> None:
    user = stack.create_user()
    body = {"workflow_id": workflow, "input_data": {"name": "n"}}
    assert api.start(user.token, body).status_code == 202
    es256 = api.start(user.es256_token, body)
    assert es256.status_code == 202, es256.text
    assert api.request("GET", "/jobs", user.es256_token).status_code == 200

    now = int(time.time())
    claims = {"sub": user.id, "aud": "authenticated", "role": "authenticated", "exp": now + 600}
    unsigned = jwt.encode(claims, key="", algorithm="none")
    wrong_aud = stack.token(user.id, aud="anon")
    expired = stack.token(user.id, exp_in=-600)
    no_sub = jwt.encode({k: v for k, v in claims.items() if k != "sub"},
                        stack.sec.jwt_secret, algorithm="HS256")
    head, payload, sig = user.token.split(".")
    forged = json.loads(jwt.utils.base64url_decode(payload))
    forged["sub"] = str(uuid.uuid4())
    tampered = ".".join([head, jwt.utils.base64url_encode(json.dumps(forged).encode()).decode(), sig])
    # Algorithm confusion: HS256 "signed" with the public key the JWKS serves.
    public_pem = stack.sec.es256_private_key().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
    body_b64 = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
    import hashlib
    import hmac
    mac = hmac.new(public_pem, header + b"." + body_b64, hashlib.sha256).digest()
    confused = b".".join([header, body_b64, base64.urlsafe_b64encode(mac).rstrip(b"=")]).decode()
    unknown_kid = jwt.encode(claims, stack.sec.es256_private_key(), algorithm="ES256",
                             headers={"kid": "no-such-kid"})
    before = int(stack.sql("select count(*) from workflow.jobs where user_id = %s",
                           (user.id,))[0][0])
    for bad in (unsigned, wrong_aud, expired, no_sub, tampered, confused, unknown_kid):
        response = api.start(bad, body)
        assert response.status_code == 401, (bad, response.text)
        assert api.request("GET", "/jobs", bad).status_code == 401
    assert int(stack.sql("select count(*) from workflow.jobs where user_id = %s",
                         (user.id,))[0][0]) == before


def test_pagination_walks_every_job_once(stack: Stack, api: Api, workflow: str) -> None:
    user = stack.create_user()
    started = [start_ok(api, user, workflow)["job_id"] for _ in range(7)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3, "workflow_id": workflow}
        if cursor:
            params["cursor"] = cursor
        page = api.request("GET", "/jobs", user.token, params=params).json()
        seen += [j["job_id"] for j in page["jobs"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(started)), "not newest first, or a gap or repeat"
    only_pending = api.request("GET", "/jobs", user.token,
                               params={"status": "cancelled", "workflow_id": workflow}).json()
    assert only_pending["jobs"] == []


def test_concurrent_requests_never_mix_users(stack: Stack, api: Api, workflow: str) -> None:
    """The local gateway runs invocations in threads of one process, as many at once."""
    from concurrent.futures import ThreadPoolExecutor

    users = [stack.create_user() for _ in range(12)]

    def start_as(user: User) -> tuple[str, str]:
        with httpx.Client(base_url=stack.api_url, timeout=30) as client:
            response = client.post("/workflows/start",
                                   json={"workflow_id": workflow, "input_data": {"name": user.id}},
                                   headers={"Authorization": f"Bearer {user.token}"})
        assert response.status_code == 202, response.text
        return user.id, response.json()["job_id"]

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(start_as, users * 3))
    for user_id, job_id in results:
        owner, name = stack.sql("select user_id::text, input_data->>'name' from workflow.jobs"
                                " where id = %s", (job_id,))[0]
        assert owner == user_id and name == user_id


def test_json_postgres_cannot_store_is_refused(stack: Stack, api: Api, workflow: str) -> None:
    user = stack.create_user()
    for value in (b"NaN", b"-Infinity", b"1e400", b'"\\ud800"', b'"a\\u0000b"'):
        raw = b'{"workflow_id": "%s", "input_data": {"name": "n", "x": %s}}' % (
            workflow.encode(), value)
        response = api.start(user.token, content=raw)
        assert response.status_code == 400, (value, response.text)
        assert response.json()["error"]["code"] == "invalid_json"
    assert job_count(stack, user) == 0


def _invoke(function: str, event: dict[str, Any]) -> dict[str, Any]:
    """A function's handler called in this process, as Lambda calls it."""
    spec = importlib.util.spec_from_file_location(
        f"app_{function.replace('-', '_')}", REPO / "functions" / function / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result: dict[str, Any] = module.handler(event, None)
    return result


def test_an_unreachable_database_api_is_a_503_not_a_500(
        stack: Stack, function_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgREST restarting (connection refused) gets a clear, retryable error and no trace."""
    monkeypatch.setenv("SUPAFLOW_REST_URL", "http://127.0.0.1:9")  # nothing listens there
    settings.cache_clear()
    user = stack.create_user()
    context = {"requestId": "r", "http": {"method": "GET", "path": "/"}}
    headers = {"authorization": f"Bearer {user.token}"}
    events = {
        "start-workflow": {"headers": headers, "requestContext": context,
                           "body": json.dumps({"workflow_id": "any", "input_data": {}})},
        "get-job": {"headers": headers, "requestContext": context,
                    "pathParameters": {"jobId": str(uuid.uuid4())}},
        "list-jobs": {"headers": headers, "requestContext": context},
    }
    for function, event in events.items():
        response = _invoke(function, {"version": "2.0", **event})
        assert response["statusCode"] == 503, (function, response)
        assert response["headers"]["Retry-After"] == "1"
        assert json.loads(response["body"])["error"]["code"] == "unavailable"


def test_postgrest_without_a_database_is_a_503() -> None:
    for code in db.POSTGREST_UNAVAILABLE:
        assert db.api_error(APIError({"code": code, "message": "no connection"})).status == 503
    assert db.api_error(APIError({"code": "23505", "message": "duplicate"})).status == 502
