"""A handle on a running local stack: its keys, SQL, tokens and users.

Tests (through the fixtures of tests/conftest.py) and benchmarks (bench/common.py's
BenchStack) use the same handle, whichever stack (state dir and ports) it points at.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
import psycopg

from stack import supervisor
from stack.config import REPO, StackConfig
from stack.environment import function_environment
from stack.postgres import database_url
from stack.secrets import StackSecrets


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
        """A fresh user, so tests never see each other's jobs."""
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


def unlimited_starts(stack: Stack, user: User) -> None:
    """Lift `user`'s start rate limit (a per-user row overrides the 600/min default):
    load generators start far more jobs than a person would."""
    stack.sql("insert into workflow.rate_limits (user_id, max_starts, window_seconds)"
              " values (%s, 100000000, 1)", (user.id,))


def stack_env(cfg: StackConfig, **extra: str) -> dict[str, str]:
    """This process's environment pointed at the stack `cfg` (its state dir and ports), for
    `python -m stack` and for helper processes that find their stack through SUPAFLOW_*."""
    return {**os.environ, "SUPAFLOW_STATE_DIR": str(cfg.state_dir),
            **{k: str(v) for k, v in cfg.ports().items()}, **extra}


def stack_cli(*args: str, env: dict[str, str] | None = None,
              timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """`python -m stack ARGS` (up, down, ...), for the stack that `env` names."""
    return subprocess.run(
        [sys.executable, "-m", "stack", *args], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=timeout, check=False,
    )


def is_up(cfg: StackConfig) -> bool:
    """The stack's supervisor runs and has said it is ready."""
    return bool(supervisor.read_pid(cfg.supervisor_pid)) and (cfg.state_dir / "ready").exists()


def net_response(stack: Stack, request_id: int, timeout_s: float = 15) -> tuple[Any, ...]:
    """net.http_post's answer (status_code, content, timed_out), once the stack's pg_net
    worker has sent the request (after the transaction that queued it committed)."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = stack.sql("select status_code, content, timed_out from net._http_response"
                         " where id = %s", (request_id,))
        if rows:
            return rows[0]
        if time.monotonic() > deadline:
            raise TimeoutError(f"net.http_post request {request_id} was not sent in {timeout_s} s")
        time.sleep(0.05)
