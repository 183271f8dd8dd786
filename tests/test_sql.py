"""The state machine's SQL behaviour, tested in SQL: each tests/sql/*.sql is a pgTAP
file (one behaviour of one function), run in a transaction that it rolls back.

Definitions are stored normalised (every default written out); each file gets the
defaults of one step as the psql variable `step`, from `supaflow_models.definitions.normalise`,
so the files do not restate them.

pgTAP comes from Debian's postgresql-15-pgtap (make setup). It is a test tool, not
part of the product: it is created here, in a schema of its own, in the local stack's
database only, never by supabase/migrations.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ValidationError

from shared.alerts import AlertRuleRequest
from supaflow_models.definitions import DefinitionError, normalise
from supaflow_models.requests import ScheduleRequest, TriggerRequest, WebhookRequest
from testkit.stack import Stack

# A normalised step without its id, transformer and dependencies.
STEP_DEFAULTS = {k: v for k, v in normalise({"steps": [{"id": "x", "transformer": "x"}]})["steps"][0].items()
                 if k not in ("id", "transformer", "depends_on")}
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
         "-v", f"step={json.dumps(STEP_DEFAULTS)}", "-c", "set search_path = public, pgtap",
         "-f", str(path)],
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


# (field, a value at its bound, a value just past it) for every number SQL reads.
BOUNDS = [
    ("timeout_s", 900, 901), ("timeout_s", 1, 0),
    ("retry.max_retries", 20, 21), ("retry.max_retries", 0, -1),
    ("retry.initial_delay_s", 0.001, 0.0009), ("retry.max_delay_s", 86400, 86401),
    ("retry.multiplier", 10, 10.5), ("retry.multiplier", 1, 0.9),
    ("retry.jitter", 1, 1.1), ("retry.jitter", 0, -0.1),
    ("delay_s", 2592000, 2592001), ("delay_s", 0, -0.5),
]


@pytest.mark.parametrize(("field", "inside", "outside"), BOUNDS)
def test_database_and_model_agree_on_bounds(stack: Stack, field: str, inside: float,
                                            outside: float) -> None:
    """The model (supaflow_models.definitions) and the database check (definition_problem) state
    the same bounds: a value at a bound passes both, one just past it neither."""

    def with_value(value: float) -> dict[str, object]:
        step: dict[str, object] = {"id": "a", "transformer": "t"}
        if field.startswith("retry."):
            policy = {"max_delay_s": 86400} if field != "retry.max_delay_s" else {}
            step["retry"] = {**policy, field.removeprefix("retry."): value}
        else:
            step[field] = value
        return {"steps": [step]}

    def sql_problem(definition: dict[str, object]) -> str | None:
        problem: str | None = stack.sql("select workflow.definition_problem(%s)",
                                        (json.dumps(definition),))[0][0]
        return problem

    stored = normalise(with_value(inside))
    assert sql_problem(stored) is None
    with pytest.raises(DefinitionError):
        normalise(with_value(outside))
    key = field.removeprefix("retry.")
    place = stored["steps"][0]["retry"] if field.startswith("retry.") else stored["steps"][0]
    place[key] = outside
    assert sql_problem(stored) is not None


# What else a request model and its table both bound: (model, table, the model's required
# fields, the table's other columns, field, a value at its bound, one just past it).
WEBHOOK = (WebhookRequest, "webhooks", {"workflow_id": "w"},
           {"workflow_id": "w", "signature": "standard", "secret": "s" * 32})
RULE = (AlertRuleRequest, "alert_rules", {"kind": "failure_rate", "threshold": 1, "window_s": 60},
        {"kind": "failure_rate", "threshold": 1, "window_s": 60})
SCHEDULE = (ScheduleRequest, "schedules", {"workflow_id": "w", "cron": "* * * * *"},
            {"workflow_id": "w", "cron": "* * * * *"})
TRIGGER = (TriggerRequest, "event_triggers",
           {"workflow_id": "w", "table": "public.t", "events": ["INSERT"]},
           {"workflow_id": "w", "table_name": "public.t", "events": ["INSERT"],
            "installed_sql": "-"})
REQUEST_BOUNDS = [
    (*WEBHOOK, "secret", "s" * 16, "s" * 15), (*WEBHOOK, "secret", "s" * 200, "s" * 201),
    (*WEBHOOK, "tolerance_s", 1, 0), (*WEBHOOK, "tolerance_s", 3600, 3601),
    (*WEBHOOK, "headers", ["x-h"] * 20, ["x-h"] * 21),
    (*RULE, "description", "d" * 500, "d" * 501), (*RULE, "threshold", 0, -0.5),
    (*RULE, "threshold", 1e9, 1.5e9), (*RULE, "window_s", 60, 59),
    (*RULE, "window_s", 86400, 86401), (*RULE, "min_volume", 0, -1),
    (*RULE, "min_volume", 1_000_000, 1_000_001), (*RULE, "webhook_url", "u" * 2000, "u" * 2001),
    (*SCHEDULE, "cron", "c" * 100, "c" * 101),
    (*TRIGGER, "condition", "c" * 2000, "c" * 2001),
    (*TRIGGER, "start_offset_s", 2592000, 2592001),
    (*TRIGGER, "start_offset_s", -2592000, -2592001),
]


@pytest.mark.parametrize(("model", "table", "required", "row", "field", "inside", "outside"),
                         REQUEST_BOUNDS, ids=[f"{b[1]}.{b[4]}={b[6]!s:.12}" for b in REQUEST_BOUNDS])
def test_request_models_and_tables_agree_on_bounds(
        stack: Stack, model: type[BaseModel], table: str, required: dict[str, Any],
        row: dict[str, Any], field: str, inside: Any, outside: Any) -> None:
    """A value at a bound passes the model and the table's check; one past it neither
    (the model's message is the clear one, the check the last word)."""
    model.model_validate({**required, field: inside})
    with pytest.raises(ValidationError):
        model.model_validate({**required, field: outside})

    def insert(value: Any) -> None:
        values = {**row, field: value}
        columns = sql.SQL(", ").join(map(sql.Identifier, values))
        with stack.db() as conn, conn.transaction(force_rollback=True):
            conn.execute(sql.SQL("insert into workflow.{} (id, {}) values ('bound-test', {})")
                         .format(sql.Identifier(table), columns,
                                 sql.SQL(", ").join(sql.Placeholder() * len(values))),
                         [Jsonb(v) if isinstance(v, dict) else v for v in values.values()])

    insert(inside)
    with pytest.raises(psycopg.errors.CheckViolation):
        insert(outside)
