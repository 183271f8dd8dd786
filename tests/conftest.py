"""Fixtures: one local stack per test session (reused when already up), the API client,
and switches of the stack's environment. Helpers live in testkit/.

Tests isolate themselves by creating their own users and workflows with fresh
ids, so they share one stack without seeing each other's rows.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from shared.settings import settings
from stack.config import StackConfig
from stack.secrets import load
from testkit.api import Api
from testkit.stack import Stack, is_up, stack_cli


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    cfg = StackConfig.from_env()
    already_up = is_up(cfg)
    if not already_up:
        result = stack_cli("up")
        assert result.returncode == 0, f"stack failed to start:\n{result.stdout}\n{result.stderr}"
    st = Stack(cfg, load(cfg.secrets_file))
    httpx.get(f"{cfg.api_url}/_gateway/health", timeout=5).raise_for_status()
    yield st
    if not already_up:
        stack_cli("down")


@pytest.fixture(scope="session")
def api(stack: Stack) -> Iterator[Api]:
    client = Api(stack.api_url)
    yield client
    client.http.close()


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


@pytest.fixture(autouse=True)
def fresh_settings() -> Iterator[None]:
    """Settings are read once per process, as on Lambda; a test that changes the
    environment (monkeypatch.setenv in a fixture) gets them read again."""
    settings.cache_clear()
    yield
    settings.cache_clear()
