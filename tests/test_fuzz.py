"""A fuzz pass over the public API (docs/openapi.yaml) with Hypothesis.

Why Hypothesis and not schemathesis: schemathesis 4.4.4 is installed, but its data
generation goes through hypothesis-jsonschema 0.23.1, which calls a private
Hypothesis API (`cu.many(...).more()`) that the installed Hypothesis 6.170 no longer
has, so generating any object schema (the start body, the query of GET /jobs)
raises AttributeError. The strategies below are written from the OpenAPI document
instead: each operation's documented parameters and body fields, drawn both valid
and invalid (wrong types, out of range, unknown fields, missing fields), plus what
a schema-driven fuzzer does not try: raw bytes, broken JSON, hostile cursors,
odd Authorization headers.

For every request: no 5xx, no stack trace in the body, JSON that matches the
documented response for that status (testkit.api.Api.check), and no row
written when the request is refused (jobs, job_steps and job_created events of the
fuzzing user, counted before and after).

The tests at the end pin what the fuzz found: NUL characters, NaN/Infinity and
lone surrogates in a body are a 400 (they once gave 502/500), and unrouted paths
answer JSON like API Gateway. Since issue 9 the strategies also draw what a hostile
user tried by hand: input nested up to thousands of levels, limits written with
digits `int()` refuses, and forged tokens (wrong key type for the header's alg, other
roles, subjects that are not user ids).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import string
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testkit.api import Api, load_openapi
from testkit.jobs import start_job_quietly
from testkit.stack import Stack, User, unlimited_starts
from testkit.workflows import create_workflow

pytestmark = pytest.mark.timeout(240)

DOC = load_openapi()
SCHEMAS = DOC["components"]["schemas"]
START = SCHEMAS["StartRequest"]
STATUSES: list[str] = SCHEMAS["JobStatus"]["enum"]
LIST_PARAMS = {p["name"]: p["schema"] for p in DOC["paths"]["/jobs"]["get"]["parameters"]}
IDEMPOTENCY_KEYS = ["fuzz-key-1", "fuzz-key-2", "fuzz-key-3"]
TRACE_MARKERS = ("Traceback (most recent call last)", 'File "/', "site-packages", ".py\", line")

WORKFLOW = {
    "input_schema": {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string", "maxLength": 40},
                       "count": {"type": "integer", "minimum": 0, "maximum": 100}},
    },
    "steps": [{"id": "echo", "transformer": "transform", "timeout_s": 5,
               "inputs": {"name": "$.input.name"}}],
}

SETTINGS = settings(max_examples=200, deadline=None, database=None, derandomize=False,
                    suppress_health_check=list(HealthCheck))


# Strategies, from the OpenAPI document ---------------------------------------------

json_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
_MISSING = object()
# Inputs WORKFLOW accepts: a short name, an optional count, anything else on the side.
valid_inputs = st.fixed_dictionaries(
    {"name": st.text(max_size=40)},
    optional={"count": st.integers(0, 100), "extra": json_values},
)


def _string_for(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    low, high = schema.get("minLength", 0), schema.get("maxLength", 64)
    return st.one_of(
        st.text(min_size=low, max_size=min(high, 64)),                       # valid
        st.text(alphabet=string.printable, min_size=high + 1, max_size=high + 40),  # too long
        st.just(""),                                                          # too short (if minLength)
        json_values.filter(lambda v: not isinstance(v, str)),                  # wrong type
    )


@st.composite
def start_bodies(draw: st.DrawFn, workflow_id: str) -> Any:
    """Bodies of POST /workflows/start, around the StartRequest schema; about a third of
    them valid, so the database side (start_job, idempotency) is exercised too."""
    props = START["properties"]
    if draw(st.integers(0, 2)) == 0:
        return {"workflow_id": workflow_id, "idempotency_key": draw(st.sampled_from(IDEMPOTENCY_KEYS)),
                "input_data": draw(valid_inputs)}
    body: dict[str, Any] = {}
    real = draw(st.booleans())
    body["workflow_id"] = workflow_id if real else draw(_string_for(props["workflow_id"]))
    body["input_data"] = draw(st.one_of(
        valid_inputs,
        st.dictionaries(st.text(max_size=8), json_values, max_size=4),
        json_values,
        st.just(_MISSING),
    ))
    if real and draw(st.booleans()):
        # Starts that pass validation reuse a few keys, so the fuzz creates at most a few jobs.
        body["idempotency_key"] = draw(st.sampled_from(IDEMPOTENCY_KEYS))
    else:
        body["idempotency_key"] = draw(st.one_of(st.just(_MISSING), _string_for(props["idempotency_key"])))
    if draw(st.integers(0, 9)) == 0:
        body[draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in props))] = draw(json_values)
    for name in list(body):
        if body[name] is _MISSING or (name in START.get("required", []) and draw(st.integers(0, 19)) == 0):
            del body[name]
    if real and "idempotency_key" not in body:
        body["idempotency_key"] = IDEMPOTENCY_KEYS[0]
    if draw(st.integers(0, 14)) == 0:
        return draw(json_values)  # not an object at all
    return body


raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    st.sampled_from([b"", b"{", b"[]", b"null", b'{"workflow_id": }', b'"x"', b"{}" * 3,
                     b'{"workflow_id": "a", "workflow_id": "b"}', b"\xff\xfe{}", b"{" * 5000 + b"}" * 5000]),
)


def deep_bodies(workflow_id: str) -> st.SearchStrategy[bytes]:
    """Start bodies whose input nests from under the 64-level bound to far past what
    Python's JSON parser can take (raw bytes: the test's own json.dumps would recurse)."""
    def body(depth: int, opener: bytes) -> bytes:
        closer = b"]" if opener == b"[" else b"}"
        inner = (opener * depth + closer * depth if opener == b"["
                 else b'{"a":' * depth + b"1" + closer * depth)
        return b'{"workflow_id": "%s", "input_data": {"name": "n", "x": %s}}' % (workflow_id.encode(), inner)
    return st.builds(body, st.one_of(st.integers(55, 70), st.integers(120, 140), st.integers(900, 6000)),
                     st.sampled_from([b"[", b"{"]))


# Strings str.isdigit() (or int()) accepts that a plain decimal limit is not.
ODD_DIGITS = ["\u00b2", "\u0661", "\u0663\u0660", "\U0001d7d0", "1_0", "+5", " 5", "5 ", "0x10", "1e1",
              "\uff15", "-0", "05", "9" * 40]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


cursors = st.one_of(
    st.text(max_size=60),
    st.binary(max_size=60).map(_b64),
    st.tuples(st.text(max_size=30), st.uuids().map(str)).map(lambda t: _b64(json.dumps(list(t)).encode())),
    st.tuples(st.datetimes().map(lambda d: d.isoformat() + "Z"), st.uuids().map(str))
      .map(lambda t: _b64(json.dumps(list(t)).encode())),
    json_values.map(lambda v: _b64(json.dumps(v).encode())),
)


@st.composite
def list_queries(draw: st.DrawFn) -> dict[str, str]:
    """Query strings of GET /jobs, around its documented parameters."""
    limit = LIST_PARAMS["limit"]
    candidates: dict[str, st.SearchStrategy[str]] = {
        "status": st.one_of(st.sampled_from(STATUSES), st.text(max_size=20)),
        "workflow_id": st.text(max_size=60),
        "limit": st.one_of(st.integers(limit["minimum"], limit["maximum"]).map(str),
                           st.integers().map(str), st.text(max_size=8), st.sampled_from(ODD_DIGITS)),
        "cursor": cursors,
    }
    valid: dict[str, st.SearchStrategy[str]] = {
        "status": st.sampled_from(STATUSES),
        "limit": st.integers(limit["minimum"], limit["maximum"]).map(str),
    }
    if draw(st.integers(0, 2)) == 0:  # a third are valid queries
        return {name: draw(strategy) for name, strategy in valid.items() if draw(st.booleans())}
    query = {name: draw(strategy) for name, strategy in candidates.items() if draw(st.booleans())}
    if draw(st.integers(0, 9)) == 0:
        query[draw(st.text(min_size=1, max_size=10))] = draw(st.text(max_size=10))
    return query


def odd_tokens(user: User, stack: Stack) -> list[str]:
    """Tokens that verify in some ways and not others; each must be a 401."""
    now = int(time.time())
    claims = {"sub": user.id, "aud": "authenticated", "role": "authenticated", "exp": now + 600}
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    deep_header = _b64(b'{"alg":"HS256","x":' + b"[" * 3000 + b"]" * 3000 + b"}")
    return [
        jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": stack.sec.es256_kid}),
        jwt.encode(claims, rsa_key, algorithm="PS256", headers={"kid": stack.sec.es256_kid}),
        jwt.encode(claims, stack.sec.jwt_secret, algorithm="HS512"),
        jwt.encode(claims, key="", algorithm="none"),
        *(stack.token(sub) for sub in ("", "not-a-uuid", f"urn:uuid:{user.id}", user.id.upper() + " ")),
        *(stack.token(user.id, role=role)
          for role in ("anon", "postgres", "service_role", "", "authenticator")),
        stack.token(user.id, aud="authenticated", nbf=now + 3600),
        f"{deep_header}.{_b64(json.dumps(claims).encode())}.sig",
    ]


@st.composite
def auth_headers(draw: st.DrawFn, user: User, stack: Stack) -> dict[str, str]:
    """Mostly a valid token, so requests reach the handlers; sometimes anything but."""
    choice = draw(st.integers(0, 19))
    if choice < 14:
        return {"Authorization": f"Bearer {draw(st.sampled_from([user.token, user.es256_token]))}"}
    if choice < 17:
        return {"Authorization": f"Bearer {draw(st.sampled_from(_odd_tokens(user, stack)))}"}
    bad = draw(st.sampled_from([
        "", "Bearer", f"bearer {user.token}", f"Bearer  {user.token}", f"Basic {user.token}",
        f"Bearer {user.token}x", f"Bearer {stack.token(user.id, exp_in=-600)}",
        f"Bearer {stack.token(user.id, aud='anon')}", f"Bearer {stack.sec.anon_key}",
        f"Bearer {stack.sec.service_role_key}", "Bearer a.b.c",
    ]))
    return {} if choice == 17 else {"Authorization": bad}


_TOKENS: dict[str, list[str]] = {}


def _odd_tokens(user: User, stack: Stack) -> list[str]:
    """odd_tokens, made once per user (an RSA key takes a while to generate)."""
    if user.id not in _TOKENS:
        _TOKENS[user.id] = odd_tokens(user, stack)
    return _TOKENS[user.id]


# The harness ------------------------------------------------------------------------


@dataclass
class Fuzz:
    stack: Stack
    api: Api
    user: User
    workflow: str
    job_ids: list[str]
    seen: dict[tuple[str, str, int], int] = field(default_factory=dict)

    def rows(self) -> tuple[int, int, int]:
        (counts,) = self.stack.sql(
            "select (select count(*) from workflow.jobs where user_id = %(u)s),"
            " (select count(*) from workflow.job_steps s join workflow.jobs j on j.id = s.job_id"
            "  where j.user_id = %(u)s),"
            " (select count(*) from workflow.job_events e join workflow.jobs j on j.id = e.job_id"
            "  where j.user_id = %(u)s and e.event_type = 'job_created')", {"u": self.user.id})
        return (int(counts[0]), int(counts[1]), int(counts[2]))

    def send(self, method: str, path: str, *, template: str | None = None, sent: Any = None,
             raw: bytes | None = None, **kwargs: Any) -> httpx.Response:
        before = self.rows()
        response = self.api.http.request(method, path, content=raw, **kwargs)
        after = self.rows()
        what = f"{method} {path} {kwargs.get('params') or ''} body={(raw or b'')[:300]!r}"
        status = response.status_code
        assert not any(marker in response.text for marker in TRACE_MARKERS), f"{what}: {response.text}"
        assert status < 500, f"{what} -> {status} {response.text[:500]}"
        self.api.check(method, template or path, response)
        key = (method, path.split("/")[1], status)
        self.seen[key] = self.seen.get(key, 0) + 1
        if status == 202:
            assert after[0] == before[0] + 1, f"{what}: 202 but {after[0] - before[0]} jobs written"
        else:
            assert after == before, f"{what} -> {status}: rows written {before} -> {after}"
        return response


@pytest.fixture(scope="module")
def fuzz(stack: Stack) -> Iterator[Fuzz]:
    user = stack.create_user()
    unlimited_starts(stack, user)
    workflow = create_workflow(stack, WORKFLOW, prefix="fuzz")
    api = Api(stack.api_url)
    with httpx.Client() as http:
        jobs = [start_job_quietly(http, stack, user, workflow, {"name": f"seed-{i}"})
                for i in range(3)]
    yield Fuzz(stack, api, user, workflow, jobs)
    api.http.close()


def test_fuzz_start_workflow(fuzz: Fuzz) -> None:
    @SETTINGS
    @given(body=start_bodies(fuzz.workflow), headers=auth_headers(fuzz.user, fuzz.stack),
           as_raw=st.integers(0, 9), raw=st.one_of(raw_bodies, deep_bodies(fuzz.workflow)))
    def run(body: Any, headers: dict[str, str], as_raw: int, raw: bytes) -> None:
        if as_raw == 0:
            fuzz.send("POST", "/workflows/start", raw=raw, headers=headers)
        else:
            payload = json.dumps(body).encode()
            fuzz.send("POST", "/workflows/start", sent=body, raw=payload,
                      headers={**headers, "Content-Type": "application/json"})

    run()
    statuses = sorted((k[2], n) for k, n in fuzz.seen.items() if k[0] == "POST")
    print(f"POST /workflows/start statuses: {statuses}")


def test_fuzz_list_jobs(fuzz: Fuzz) -> None:
    @settings(SETTINGS, max_examples=150)
    @given(query=list_queries(), headers=auth_headers(fuzz.user, fuzz.stack))
    def run(query: dict[str, str], headers: dict[str, str]) -> None:
        response = fuzz.send("GET", "/jobs", params=query, headers=headers)
        if response.status_code == 200 and response.json()["next_cursor"]:
            # Follow real cursors too: every page must be served as well.
            fuzz.send("GET", "/jobs", params={**query, "cursor": response.json()["next_cursor"]},
                      headers=headers)

    run()
    print(f"GET /jobs statuses: {sorted((k[2], n) for k, n in fuzz.seen.items() if k[1] == 'jobs')}")


def _one_segment(job_id: str) -> bool:
    """A jobId that is one path segment: others are routing (see test_unrouted_paths_answer_json)."""
    return "/" not in job_id and job_id not in (".", "..")


def test_fuzz_get_job(fuzz: Fuzz) -> None:
    job_ids = st.one_of(st.sampled_from(fuzz.job_ids), st.uuids().map(str),
                        st.text(min_size=1, max_size=80).filter(_one_segment),
                        st.uuids().map(lambda u: str(u).upper()), st.uuids().map(lambda u: u.hex))

    @settings(SETTINGS, max_examples=100)
    @given(job_id=job_ids, headers=auth_headers(fuzz.user, fuzz.stack))
    def run(job_id: str, headers: dict[str, str]) -> None:
        fuzz.send("GET", f"/jobs/{urllib.parse.quote(job_id, safe='')}", template="/jobs/x", headers=headers)

    run()


def test_fuzz_cancel_job(fuzz: Fuzz) -> None:
    job_ids = st.one_of(st.sampled_from(fuzz.job_ids), st.uuids().map(str),
                        st.text(min_size=1, max_size=80).filter(_one_segment))

    @settings(SETTINGS, max_examples=80)
    @given(job_id=job_ids, headers=auth_headers(fuzz.user, fuzz.stack), raw=raw_bodies)
    def run(job_id: str, headers: dict[str, str], raw: bytes) -> None:
        response = fuzz.send("POST", f"/jobs/{urllib.parse.quote(job_id, safe='')}/cancel",
                             template="/jobs/x/cancel", raw=raw, headers=headers)
        if response.status_code == 200:
            assert job_id in fuzz.job_ids and response.json()["job_id"] == job_id

    run()


def test_every_odd_token_is_a_401(fuzz: Fuzz) -> None:
    """The forged tokens the strategies draw from, each tried on every user route."""
    problems = []
    for token in _odd_tokens(fuzz.user, fuzz.stack):
        for method, path, template in (("GET", "/jobs", None), ("POST", "/workflows/start", None),
                                       ("GET", f"/jobs/{fuzz.job_ids[0]}", "/jobs/x"),
                                       ("POST", f"/jobs/{fuzz.job_ids[0]}/cancel", "/jobs/x/cancel")):
            body = json.dumps({"workflow_id": fuzz.workflow, "input_data": {"name": "n"}}).encode()
            response = fuzz.send(method, path, template=template, raw=body,
                                 headers={"Authorization": f"Bearer {token}"})
            if response.status_code != 401 or response.json()["error"]["code"] != "invalid_token":
                problems.append(f"{method} {path} {token[:40]}... -> {response.status_code} {response.text}")
    assert not problems, "\n".join(problems)


def test_fuzz_internal_routes_refuse_strangers(stack: Stack) -> None:
    """Not in the public document, but reachable: without the internal credential, only 401/403."""
    routes = ["/internal/orchestrator", "/internal/executors/transform", "/internal/executors/webhook-call",
              "/internal/executors/http-download", "/internal/executors/gemini-prompt"]
    tokens = st.sampled_from(["", "Bearer", f"Bearer {stack.sec.service_role_key}",
                              f"Bearer {stack.sec.anon_key}", f"Bearer {stack.sec.internal_token}x",
                              f"Bearer {stack.sec.internal_token[:-1]}", "Bearer " + "a" * 5000])

    with httpx.Client(base_url=stack.api_url, timeout=30) as http:
        @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(route=st.sampled_from(routes), token=tokens, body=st.one_of(raw_bodies, json_values.map(
            lambda v: json.dumps(v).encode())))
        def run(route: str, token: str, body: bytes) -> None:
            headers = {"Authorization": token} if token else {}
            response = http.post(route, content=body, headers=headers)
            assert response.status_code in (401, 403), (route, token[:20], response.status_code,
                                                         response.text)
            assert not any(marker in response.text for marker in TRACE_MARKERS)
            assert response.json()["error"]["code"]

        run()


def test_fuzz_webhook_deliveries(stack: Stack) -> None:
    """The one route without a token: odd ids, headers and bodies are never a 5xx, and only
    a delivery signed with the secret starts a job (one per delivery id)."""
    workflow = create_workflow(stack, WORKFLOW, prefix="fuzz")
    webhook_id = f"fuzz-{uuid.uuid4().hex[:8]}"
    api = Api(stack.api_url)
    saved = api.request("PUT", f"/webhooks/{webhook_id}", stack.sec.service_role_key,
                        json={"workflow_id": workflow, "input_mapping": {"name": "x"}})
    secret = saved.json()["secret"]
    key = base64.b64decode(secret.removeprefix("whsec_"))
    texts = st.one_of(st.text(max_size=30), st.sampled_from(["", "v1,", "v1,=", "t=1,v1=", "msg_1"]))

    @st.composite
    def headers(draw: st.DrawFn, body: bytes) -> dict[str, str]:
        """Half of them well signed (so the body's handling past the signature is fuzzed
        too), the rest with odd, stale or missing parts."""
        if draw(st.booleans()):
            delivery, stamp, odd = draw(st.sampled_from(["msg_1", "msg_2", "msg_3"])), \
                str(int(time.time())), False
        else:
            delivery = draw(st.one_of(st.just("a" * 201), texts))
            stamp = draw(st.one_of(st.just(str(int(time.time()) - 400)), texts))
            odd = draw(st.booleans())
        signed = f"{delivery}.{stamp}.".encode() + body
        signature = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        found = {"webhook-id": delivery, "webhook-timestamp": stamp,
                 "webhook-signature": draw(texts) if odd else signature}
        dropped = draw(st.sampled_from([None, None, None, *found])) if odd else None
        return {k: v for k, v in found.items()
                if k != dropped and v.isascii() and v.isprintable()}

    accepted: set[str] = set()
    ids = st.one_of(st.just(webhook_id), st.text(min_size=1, max_size=60).filter(_one_segment))

    @settings(SETTINGS, max_examples=150)
    @given(target=ids, body=st.one_of(raw_bodies, json_values.map(lambda v: json.dumps(v).encode())),
           data=st.data())
    def run(target: str, body: bytes, data: st.DataObject) -> None:
        sent = data.draw(headers(body))
        response = api.http.post(f"/webhooks/{urllib.parse.quote(target, safe='')}", content=body,
                                 headers=sent)
        what = f"{target[:40]!r} {sent} {body[:100]!r}"
        assert response.status_code < 500, f"{what} -> {response.status_code} {response.text}"
        assert not any(marker in response.text for marker in TRACE_MARKERS), response.text
        api.check("POST", "/webhooks/x", response)
        if response.status_code == 202:
            assert target == webhook_id and sent["webhook-id"] not in accepted, what
            accepted.add(sent["webhook-id"])

    try:
        run()
        assert stack.sql("select count(*) from workflow.jobs where workflow_id = %s",
                         (workflow,)) == [(len(accepted),)]
        print(f"POST /webhooks: {len(accepted)} deliveries accepted")
    finally:
        api.http.close()


# Engine bugs the fuzz found; each fails until fixed. -------------------------------


@pytest.fixture
def starter(fuzz: Fuzz) -> tuple[Fuzz, dict[str, str]]:
    return fuzz, {"Authorization": f"Bearer {fuzz.user.token}", "Content-Type": "application/json"}


def _refused_cleanly(fuzz: Fuzz, raw: bytes, headers: dict[str, str]) -> list[str]:
    problems = []
    before = fuzz.rows()
    response = fuzz.api.http.post("/workflows/start", content=raw, headers=headers)
    if response.status_code != 400:
        problems.append(f"{raw[:80]!r} -> {response.status_code} {response.text[:120]}")
    if fuzz.rows() != before:
        problems.append(f"{raw[:80]!r} wrote rows")
    return problems


def test_nul_characters_are_a_400_not_a_502(starter: tuple[Fuzz, dict[str, str]]) -> None:
    fuzz, headers = starter
    problems = []
    for body in ({"input_data": {"name": "a\x00b"}, "idempotency_key": "nul-1"},
                 {"input_data": {"name": "ok", "k\x00": 1}, "idempotency_key": "nul-2"},
                 {"input_data": {"name": "ok"}, "idempotency_key": "nul\x00key"}):
        raw = json.dumps({"workflow_id": fuzz.workflow, **body}).encode()
        problems += _refused_cleanly(fuzz, raw, headers)
    assert not problems, "\n".join(problems)


def test_json_the_engine_cannot_store_is_a_400_not_a_500(starter: tuple[Fuzz, dict[str, str]]) -> None:
    fuzz, headers = starter
    problems = []
    for value in (b"NaN", b"Infinity", b"-Infinity", b"1e400", b'"\\ud800"', b'"a\\udc00b"'):
        raw = b'{"workflow_id": "%s", "input_data": {"name": "n", "extra": %s}, "idempotency_key": "%s"}' % (
            fuzz.workflow.encode(), value, uuid.uuid4().hex.encode())
        problems += _refused_cleanly(fuzz, raw, headers)
    assert not problems, "\n".join(problems)


def test_unrouted_paths_answer_json(stack: Stack) -> None:
    problems = []
    with httpx.Client(base_url=stack.api_url) as http:
        for method, path in (("GET", "/jobs/a%2Fb"), ("GET", "/jobs/"), ("GET", "/jobs/%2F"),
                             ("GET", "/nope"), ("DELETE", "/jobs")):
            response = http.request(method, path)
            if response.status_code not in (403, 404, 405) or not response.headers.get(
                    "content-type", "").startswith("application/json"):
                problems.append(f"{method} {path} -> {response.status_code} "
                                f"{response.headers.get('content-type')} {response.text[:40]!r}")
    assert not problems, "\n".join(problems)


def test_a_nul_in_any_path_parameter_is_a_400(stack: Stack) -> None:
    """Found by the webhook fuzz: Postgres text cannot hold NUL, and an id holding one was
    a 502 on every route that looked it up. Every documented route, as an admin."""
    problems = []
    with httpx.Client(base_url=stack.api_url, timeout=30) as http:
        for template, item in DOC["paths"].items():
            if "{" not in template:
                continue
            path = re.sub(r"\{[^}]+\}", "a%00b", template)
            for method in item:
                response = http.request(method.upper(), path, json={},
                                        headers=stack.service_headers())
                if response.status_code != 400 or "NUL" not in response.text:
                    problems.append(f"{method.upper()} {path} -> {response.status_code} "
                                    f"{response.text[:80]}")
    assert not problems, "\n".join(problems)
