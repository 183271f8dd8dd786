"""The local Supabase-compatible stack, exercised as a user would: real processes, real HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from postgrest.exceptions import APIError

from stack import supervisor
from stack.config import REPO
from supabase import ClientOptions, create_client
from supaflow_models.definitions import normalise
from testkit.stack import Stack, net_response

ONE_STEP = normalise({"steps": [{"id": "a", "transformer": "transform"}]})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def second_stack_env() -> Iterator[dict[str, str]]:
    """A separate state folder and ports, so this test never touches the session's stack."""
    state = REPO / ".stack-tests" / uuid.uuid4().hex[:8]
    state.parent.mkdir(exist_ok=True)
    os.chmod(state.parent, 0o711)  # noqa: S103 - the postgres user must traverse it
    env = {
        **os.environ,
        "SUPAFLOW_STATE_DIR": str(state),
        "SUPAFLOW_API_PORT": str(_free_port()),
        "SUPAFLOW_DB_PORT": str(_free_port()),
        "SUPAFLOW_REST_PORT": str(_free_port()),
        "SUPAFLOW_S3_PORT": str(_free_port()),
        "SUPAFLOW_GEMINI_PORT": str(_free_port()),
    }
    yield env
    subprocess.run([sys.executable, "-m", "stack", "down"], env=env, cwd=REPO,
                   capture_output=True, check=False, timeout=120)
    shutil.rmtree(state, ignore_errors=True)


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stack", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=240, check=False)


def _env_values(env: dict[str, str]) -> dict[str, str]:
    out = _cli(env, "env")
    assert out.returncode == 0, out.stderr
    return dict(line.split("=", 1) for line in out.stdout.splitlines())


def _stack_pids(state: Path) -> list[int]:
    """The stack's processes, with their children (the gateway's worker processes)."""
    pids = [int((state / "supervisor.pid").read_text())]
    pids += [int(p.read_text()) for p in (state / "pids").glob("*.pid")]
    pids.append(int((state / "pgdata" / "postmaster.pid").read_text().splitlines()[0]))
    for pid in list(pids):
        children = Path(f"/proc/{pid}/task/{pid}/children")
        if children.exists():
            pids += [int(c) for c in children.read_text().split()]
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def test_fresh_stack_restarts_without_reapplying_or_losing_data(
    second_stack_env: dict[str, str],
) -> None:
    env = second_stack_env
    state = Path(env["SUPAFLOW_STATE_DIR"])
    first = _cli(env, "up")
    assert first.returncode == 0, first.stdout + first.stderr
    values = _env_values(env)
    assert set(values) >= {
        "API_URL", "SUPABASE_URL", "SUPABASE_ANON_KEY", "SUPABASE_SERVICE_ROLE_KEY",
        "SUPABASE_JWT_SECRET", "DATABASE_URL", "S3_ENDPOINT_URL", "SUPAFLOW_INTERNAL_TOKEN",
    }
    with psycopg.connect(values["DATABASE_URL"], autocommit=True) as conn:
        migrations = conn.execute(
            "select version, applied_at from supabase_migrations.schema_migrations order by 1"
        ).fetchall()
        assert migrations, "no migration was applied on a fresh cluster"
        conn.execute("insert into workflow.workflows (id, definition) values ('keep-me', %s)",
                     (json.dumps(ONE_STEP),))
    assert "(new cluster)" in (state / "logs" / "stack.log").read_text()

    down = subprocess.run(["make", "-s", "down"], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
    assert down.returncode == 0, down.stdout + down.stderr

    second = _cli(env, "up")
    assert second.returncode == 0, second.stdout + second.stderr
    assert _env_values(env) == values, "keys were regenerated on restart"
    with psycopg.connect(values["DATABASE_URL"], autocommit=True) as conn:
        again = conn.execute(
            "select version, applied_at from supabase_migrations.schema_migrations order by 1"
        ).fetchall()
        kept = conn.execute("select id from workflow.workflows where id = 'keep-me'").fetchall()
    assert again == migrations, "a migration was applied twice"
    assert kept == [("keep-me",)]
    assert "migrations applied: none" in (state / "logs" / "stack.log").read_text()

    # `make down` leaves no process of the stack running and no port bound.
    pids = _stack_pids(state)
    down = subprocess.run(["make", "-s", "down"], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
    assert down.returncode == 0, down.stdout + down.stderr
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    assert not [p for p in pids if _alive(p)], "stack processes survived make down"
    for name in ("SUPAFLOW_API_PORT", "SUPAFLOW_DB_PORT", "SUPAFLOW_REST_PORT", "SUPAFLOW_S3_PORT",
                 "SUPAFLOW_GEMINI_PORT"):
        assert not supervisor.port_in_use("127.0.0.1", int(env[name])), f"{name} still bound"


def test_a_taken_port_gets_a_clear_message(second_stack_env: dict[str, str]) -> None:
    env = second_stack_env
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(env["SUPAFLOW_API_PORT"])))
        squatter.listen()
        result = _cli(env, "up")
    assert result.returncode != 0
    assert "SUPAFLOW_API_PORT" in result.stderr and env["SUPAFLOW_API_PORT"] in result.stderr


def _seed_job(stack: Stack, user_id: str, workflow_id: str) -> str:
    rows = stack.sql(
        "insert into workflow.jobs (user_id, workflow_id, workflow_version) values (%s, %s, 1)"
        " returning id::text",
        (user_id, workflow_id),
    )
    return str(rows[0][0])


@pytest.fixture
def workflow_id(stack: Stack) -> str:
    wid = f"wf-{uuid.uuid4().hex[:8]}"
    stack.sql("insert into workflow.workflows (id, definition) values (%s, %s)",
              (wid, json.dumps(ONE_STEP)))
    return wid


def test_rls_through_supabase_py(stack: Stack, workflow_id: str) -> None:
    alice, bob = stack.create_user(), stack.create_user()
    alice_job = _seed_job(stack, alice.id, workflow_id)
    bob_job = _seed_job(stack, bob.id, workflow_id)

    def client(token: str | None) -> Any:
        c = create_client(stack.api_url, stack.sec.anon_key,
                          options=ClientOptions(schema="workflow"))
        if token:
            c.postgrest.auth(token)
        return c

    def visible(token: str | None) -> set[str]:
        rows = client(token).table("jobs").select("id").eq("workflow_id", workflow_id).execute()
        return {r["id"] for r in rows.data}

    assert visible(alice.token) == {alice_job}
    assert visible(bob.es256_token) == {bob_job}
    assert visible(stack.sec.service_role_key) == {alice_job, bob_job}
    with pytest.raises(APIError) as anon:
        visible(None)
    assert anon.value.code == "42501"

    with pytest.raises(APIError) as refused:
        client(alice.token).table("jobs").insert(
            {"user_id": bob.id, "workflow_id": workflow_id, "workflow_version": 1}
        ).execute()
    assert refused.value.code == "42501"
    assert stack.sql("select count(*) from workflow.jobs where workflow_id = %s",
                     (workflow_id,)) == [(2,)]


def test_postgrest_refuses_bad_tokens(stack: Stack, workflow_id: str) -> None:
    user = stack.create_user()
    _seed_job(stack, user.id, workflow_id)
    url = f"{stack.api_url}/rest/v1/jobs?select=id&workflow_id=eq.{workflow_id}"

    def get(token: str) -> httpx.Response:
        return httpx.get(url, headers={"apikey": stack.sec.anon_key,
                                       "Authorization": f"Bearer {token}",
                                       "Accept-Profile": "workflow"})

    assert get(user.token).status_code == 200 and len(get(user.token).json()) == 1
    assert get(user.es256_token).status_code == 200 and len(get(user.es256_token).json()) == 1

    head, payload, sig = user.token.split(".")
    claims = json.loads(jwt.utils.base64url_decode(payload))
    claims["sub"] = str(uuid.uuid4())
    forged_payload = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
    tampered = f"{head}.{forged_payload}.{sig}"
    expired = stack.token(user.id, exp_in=-120)
    wrong_secret = jwt.encode({"sub": user.id, "role": "authenticated",
                               "exp": int(time.time()) + 60}, "not-the-secret" * 3,
                              algorithm="HS256")
    other_key = ec.generate_private_key(ec.SECP256R1())
    wrong_key = jwt.encode({"sub": user.id, "role": "authenticated",
                            "exp": int(time.time()) + 60}, other_key, algorithm="ES256",
                           headers={"kid": stack.sec.es256_kid})
    for bad in (tampered, expired, wrong_secret, wrong_key):
        response = get(bad)
        assert response.status_code == 401, (bad, response.text)


def test_es256_token_verifies_against_served_jwks(stack: Stack) -> None:
    token = stack.token(str(uuid.uuid4()), alg="ES256")
    jwks = jwt.PyJWKClient(f"{stack.api_url}/auth/v1/.well-known/jwks.json")
    key = jwks.get_signing_key_from_jwt(token)
    claims = jwt.decode(token, key.key, algorithms=["ES256"], audience="authenticated")
    assert claims["role"] == "authenticated"
    served = httpx.get(f"{stack.api_url}/auth/v1/.well-known/jwks.json").json()
    assert all("d" not in k for k in served["keys"]), "the JWKS leaks a private key"

    forged = jwt.encode({"sub": "x", "aud": "authenticated"},
                        ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                        headers={"kid": stack.sec.es256_kid})
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(forged, key.key, algorithms=["ES256"], audience="authenticated")


class _Recorder(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.received.append({"path": self.path, "body": self.rfile.read(length),
                              "headers": dict(self.headers.items())})
        payload = b'{"pong": true}'
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


def test_net_http_post_reaches_a_local_server(stack: Stack) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        rows = stack.sql(
            "select net.http_post(url := %s, body := %s::jsonb, params := '{\"q\": \"1\"}',"
            " headers := '{\"Content-Type\": \"application/json\", \"X-Test\": \"yes\"}')",
            (url, json.dumps({"hello": "world"})),
        )
        response = net_response(stack, rows[0][0])
    finally:
        server.shutdown()
    assert response == (201, '{"pong": true}', False)
    (call,) = [r for r in _Recorder.received if r["path"] == "/hook?q=1"]
    assert json.loads(call["body"]) == {"hello": "world"}
    assert call["headers"]["X-Test"] == "yes"


def test_net_http_post_sends_nothing_for_a_rolled_back_transaction(stack: Stack) -> None:
    """As pg_net: the request is queued in the caller's transaction and sent after it
    commits, never inside it; a rollback takes it away."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    marker = uuid.uuid4().hex
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{marker}"
        with stack.db() as conn:
            with conn.transaction():
                (kept,) = conn.execute("select net.http_post(%s || '/kept')", (url,)).fetchone()  # type: ignore[misc]
                time.sleep(1.5)  # the worker would have sent it by now, were it not queued
                assert not [r for r in _Recorder.received if marker in r["path"]]
            with pytest.raises(psycopg.errors.RaiseException), conn.transaction():
                (lost,) = conn.execute("select net.http_post(%s || '/lost')", (url,)).fetchone()  # type: ignore[misc]
                conn.execute("do $$ begin raise exception 'roll back'; end $$")
        assert net_response(stack, kept)[0] == 201
        time.sleep(1.5)
    finally:
        server.shutdown()
    assert [r["path"] for r in _Recorder.received if marker in r["path"]] == [f"/{marker}/kept"]
    assert stack.sql("select count(*) from net.http_request_queue")[0][0] == 0
    assert stack.sql("select count(*) from net._http_response where id = %s", (lost,))[0][0] == 0


def test_supabase_internals_are_not_callable_by_api_roles(stack: Stack) -> None:
    for role in ("anon", "authenticated"):
        for statement in (
            "select net.http_post('http://127.0.0.1:9/')",
            "select decrypted_secret from vault.decrypted_secrets",
            "select vault.create_secret('x')",
            "select * from auth.users",
        ):
            with stack.db() as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"set role {role}")
                conn.execute(statement.encode())


@pytest.mark.timeout(150)
def test_pg_cron_runs_a_scheduled_job(stack: Stack) -> None:
    name = f"test-{uuid.uuid4().hex[:8]}"
    marker = uuid.uuid4().hex
    job_id = stack.sql("select cron.schedule(%s, '* * * * *', %s)",
                       (name, f"select '{marker}'"))[0][0]
    try:
        deadline = time.monotonic() + 130
        status: list[tuple[Any, ...]] = []
        while time.monotonic() < deadline:
            status = stack.sql(
                "select status from cron.job_run_details where jobid = %s", (job_id,)
            )
            if status and status[0][0] in ("succeeded", "failed"):
                break
            time.sleep(1)
        assert status and status[0][0] == "succeeded", status
    finally:
        stack.sql("select cron.unschedule(%s)", (name,))


def _nodelay_of_accepted(listening: socket.socket) -> int:
    """TCP_NODELAY on a connection asyncio accepts on `listening`, as a uvicorn worker does."""

    async def main() -> int:
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sock = transport.get_extra_info("socket")
                accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await asyncio.get_running_loop().create_server(Probe, sock=listening)
        port = listening.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await asyncio.wait_for(accepted, 5)
        finally:
            writer.close()
            server.close()

    return asyncio.run(main())


def test_gateway_workers_get_tcp_nodelay_connections() -> None:
    """Without TCP_NODELAY every kept-alive response waited ~40 ms for a delayed ACK:
    the socket uvicorn makes for its workers names no protocol, so asyncio skips it."""
    from stack.gateway import _listening_socket

    assert _nodelay_of_accepted(_listening_socket("127.0.0.1", 0)) != 0
    unnamed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # as uvicorn's bind_socket
    unnamed.bind(("127.0.0.1", 0))
    assert _nodelay_of_accepted(unnamed) == 0


def test_a_port_held_by_a_passing_connection_is_waited_for() -> None:
    """The stack's ports lie in the ephemeral range: a client socket bound to one (not
    listening) is waited out; a server listening there is refused at once."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))  # bound like a client's ephemeral port, not listening
    port = int(holder.getsockname()[1])
    threading.Timer(0.5, holder.close).start()
    started = time.monotonic()
    supervisor.check_port_free("127.0.0.1", port, "X_PORT", wait_s=10)
    assert 0.3 < time.monotonic() - started < 5

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        started = time.monotonic()
        with pytest.raises(supervisor.PortTaken):
            supervisor.check_port_free("127.0.0.1", int(server.getsockname()[1]), "X_PORT", wait_s=10)
        assert time.monotonic() - started < 2


def test_a_changed_migration_is_refused_not_skipped(stack: Stack) -> None:
    """Migrations are still edited in place before the first release: a local cluster
    that applied an older text must not run old SQL under new code."""
    from stack import postgres

    with psycopg.connect(stack.database_url) as conn:  # one transaction, rolled back
        assert postgres.apply_migrations(conn, Path("/x/pgdata")) == []
        conn.execute("update supabase_migrations.schema_migrations set statements = array['-- old']"
                     " where version = '20261123000100'")
        with pytest.raises(postgres.StaleCluster, match=r"workflow_schema\.sql changed .* /x/pgdata"):
            postgres.apply_migrations(conn, Path("/x/pgdata"))
        conn.rollback()
