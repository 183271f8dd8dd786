"""Fixtures: one local stack per test session (reused when already up), users and tokens.

Tests isolate themselves by creating their own users and workflows with fresh
ids, so they share one stack without seeing each other's rows.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import psycopg
import pytest

from shared.definitions import normalise
from shared.settings import settings
from stack import supervisor
from stack.config import REPO, StackConfig
from stack.environment import function_environment
from stack.postgres import database_url
from stack.secrets import StackSecrets, load


@dataclass
class User:
    id: str
    email: str
    token: str  # HS256, signed with the project's JWT secret
    es256_token: str  # ES256, verifiable through the JWKS endpoint


@dataclass
class Stack:
    cfg: StackConfig
    sec: StackSecrets

    @property
    def api_url(self) -> str:
        return self.cfg.api_url

    @property
    def database_url(self) -> str:
        return database_url(self.cfg, self.sec)

    def db(self) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(self.database_url, autocommit=True)

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.db() as conn:
            cur = conn.execute(query.encode() if params is None else query, params)
            return cur.fetchall() if cur.description else []

    def token(
        self, sub: str, *, alg: str = "HS256", exp_in: int = 3600, aud: str = "authenticated",
        role: str = "authenticated", **extra: Any,
    ) -> str:
        now = int(time.time())
        claims = {"sub": sub, "aud": aud, "role": role, "iat": now, "exp": now + exp_in, **extra}
        if alg == "HS256":
            return jwt.encode(claims, self.sec.jwt_secret, algorithm="HS256")
        return jwt.encode(
            claims, self.sec.es256_private_key(), algorithm="ES256",
            headers={"kid": self.sec.es256_kid},
        )

    def create_user(self) -> User:
        uid = str(uuid.uuid4())
        email = f"{uid[:8]}@example.test"
        self.sql("insert into auth.users (id, email) values (%s, %s)", (uid, email))
        return User(uid, email, self.token(uid), self.token(uid, alg="ES256"))

    def service_headers(self) -> dict[str, str]:
        return {
            "apikey": self.sec.service_role_key,
            "Authorization": f"Bearer {self.sec.service_role_key}",
        }

    def internal_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.sec.internal_token}"}

    def env(self) -> dict[str, str]:
        return function_environment(self.cfg, self.sec)


def _stack_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stack", *args], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=240, check=False,
    )


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    cfg = StackConfig.from_env()
    already_up = bool(supervisor.read_pid(cfg.supervisor_pid)) and (cfg.state_dir / "ready").exists()
    if not already_up:
        result = _stack_cli("up")
        assert result.returncode == 0, f"stack failed to start:\n{result.stdout}\n{result.stderr}"
    st = Stack(cfg, load(cfg.secrets_file))
    httpx.get(f"{cfg.api_url}/health", timeout=5).raise_for_status()
    yield st
    if not already_up:
        _stack_cli("down")


@pytest.fixture(scope="session")
def api(stack: Stack) -> Iterator[Any]:
    from tests.api_client import Api

    client = Api(stack.api_url)
    yield client
    client.http.close()


def create_workflow(
    stack: Stack, definition: dict[str, Any], *, active: bool = True, prefix: str = "wf"
) -> str:
    """A workflow with a fresh id, so tests never share one."""
    wid = f"{prefix}-{uuid.uuid4().hex[:10]}"
    stack.sql(
        "insert into workflow.workflows (id, definition, is_active) values (%s, %s, %s)",
        (wid, psycopg.types.json.Jsonb(normalise(definition)), active),
    )
    return wid


@pytest.fixture
def no_cron(stack: Stack) -> Iterator[None]:
    """Pause the pg_cron safety net, to show the engine drains without it
    (or to keep its passes from taking a test's steps)."""
    (command,) = stack.sql("select command from cron.job where jobname = 'supaflow-orchestrator'")
    stack.sql("select cron.unschedule('supaflow-orchestrator')")
    try:
        yield
    finally:
        stack.sql("select cron.schedule('supaflow-orchestrator', '* * * * *', %s)", (command[0],))


@pytest.fixture
def function_env(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process configured as a function of the stack, to run functions' code here."""
    for key, value in stack.env().items():
        monkeypatch.setenv(key, value)
    settings.cache_clear()
    yield
    settings.cache_clear()
