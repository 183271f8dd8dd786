"""The state machine's SQL behaviour, tested in SQL: each tests/sql/*.sql is a pgTAP
file (one behaviour of one function), run in a transaction that it rolls back.

pgTAP comes from Debian's postgresql-15-pgtap (make setup). It is a test tool, not
part of the product: it is created here, in a schema of its own, in the local stack's
database only, never by supabase/migrations.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Stack

SQL_TESTS = sorted((Path(__file__).parent / "sql").glob("*.sql"))
_PLAN = re.compile(r"^1\.\.(\d+)$")
_RESULT = re.compile(r"^(not ok|ok) (\d+)")


@pytest.fixture(scope="module")
def pgtap(stack: Stack) -> Stack:
    stack.sql("create schema if not exists pgtap; create extension if not exists pgtap schema pgtap")
    return stack


@pytest.mark.parametrize("path", SQL_TESTS, ids=[p.stem for p in SQL_TESTS])
def test_sql(pgtap: Stack, path: Path) -> None:
    result = subprocess.run(
        ["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d", pgtap.database_url,
         "-c", "set search_path = public, pgtap", "-f", str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    tap = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    ran = result.returncode == 0  # (not the result itself: its repr holds the database URL)
    assert ran, f"{path.name} did not run:\n{result.stderr}\n" + "\n".join(tap)
    plans = [int(m[1]) for line in tap if (m := _PLAN.match(line))]
    results = [(m[1], int(m[2])) for line in tap if (m := _RESULT.match(line))]
    failed = [line for line in tap if line.startswith(("not ok", "#"))]
    assert plans and results, f"{path.name} printed no TAP:\n" + "\n".join(tap)
    assert all(status == "ok" for status, _ in results), "\n".join(failed)
    assert len(results) == plans[0], f"planned {plans[0]}, ran {len(results)}:\n" + "\n".join(tap)


def test_every_sql_test_rolls_back() -> None:
    """A pgTAP file that committed would leave rows behind for every other test."""
    for path in SQL_TESTS:
        text = path.read_text().lower()
        assert re.search(r"^begin;", text, re.M) and re.search(r"^rollback;\s*\Z", text, re.M), path.name
