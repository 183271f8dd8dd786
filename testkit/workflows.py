"""Workflows and transformers for tests and benchmarks, and the definitions they share.

`create_workflow` is the one place a test or benchmark inserts a workflow row: it stores
the definition normalised (supaflow_models.definitions.normalise), the only form the database takes.
"""

from __future__ import annotations

import uuid
from typing import Any

from psycopg.types.json import Jsonb

from supaflow_models.definitions import normalise
from testkit.stack import Stack

WEBHOOK_SECRET_ENV = "SUPAFLOW_WEBHOOK_SECRET"  # set by the local stack's function environment
FAST_RETRY = {"max_retries": 5, "initial_delay_s": 0.2, "max_delay_s": 2.0, "jitter": 0.2}
# A step's lease is its timeout_s + 15 s: short timeouts let a killed executor's steps come back fast.
STEP_TIMEOUT_S = 2


def create_workflow(
    stack: Stack, definition: dict[str, Any], *, active: bool = True, prefix: str = "wf",
    workflow_id: str | None = None, description: str | None = None,
) -> str:
    """A workflow with a fresh id, so tests never share one; or with `workflow_id`, replacing
    that workflow's definition (benchmarks reuse theirs from run to run)."""
    wid = workflow_id or f"{prefix}-{uuid.uuid4().hex[:10]}"
    stack.sql(
        "insert into workflow.workflows (id, description, definition, is_active)"
        " values (%s, %s, %s, %s)"
        " on conflict (id) do update set definition = excluded.definition,"
        " is_active = excluded.is_active",
        (wid, description, Jsonb(normalise(definition)), active),
    )
    return wid


def add_transformer(stack: Stack, type_: str, config: dict[str, Any], *, prefix: str = "t") -> str:
    """A transformer with a fresh id; its function is `execute-<type>` (webhook_call ->
    execute-webhook-call), as in the seed."""
    tid = f"{prefix}-{type_}-{uuid.uuid4().hex[:10]}"
    stack.sql(
        "insert into workflow.transformers (id, type, config, target_function)"
        " values (%s, %s, %s, %s)",
        (tid, type_, Jsonb(config), f"execute-{type_.replace('_', '-')}"),
    )
    return tid


def failing_transformer(stack: Stack, attempts: int | None = None, *, retryable: bool = True,
                        message: str = "boom") -> str:
    """A transform that fails its first `attempts` attempts (every attempt when None)."""
    failure: dict[str, Any] = {"retryable": retryable, "message": message}
    if attempts is not None:
        failure["attempts"] = attempts
    return add_transformer(stack, "transform", {"fail": failure})


def webhook_transformer(stack: Stack, url: str) -> str:
    """A webhook-call transformer that signs with the stack's webhook secret."""
    return add_transformer(stack, "webhook_call", {"url": url, "secret_env_var": WEBHOOK_SECRET_ENV})


def chain(n_steps: int, *, timeout_s: int | None = None,
          retry: dict[str, Any] | None = None) -> dict[str, Any]:
    """n no-op `transform` steps s1..sn in a row, each reading the previous one's output;
    the job's result is the last one's `n`. The benchmarks' workload and the soak's cheap bulk."""
    timeout = {} if timeout_s is None else {"timeout_s": timeout_s}
    steps: list[dict[str, Any]] = [
        {"id": "s1", "transformer": "transform", **timeout, "inputs": {"n": "$.input.n"}}]
    for i in range(2, n_steps + 1):
        steps.append({"id": f"s{i}", "transformer": "transform", **timeout,
                      "inputs": {"n": f"$.steps.s{i - 1}.output.n"}})
    definition: dict[str, Any] = {"steps": steps, "output": {"n": f"$.steps.s{n_steps}.output.n"}}
    if retry is not None:
        definition["retry"] = retry
    return definition


def diamond(hook: str, *, hook_timeout_s: int = 3, retry: dict[str, Any] | None = None) -> dict[str, Any]:
    """a -> (hook: webhook-call, side: transform) -> join. Every job of it should complete."""
    t = STEP_TIMEOUT_S
    return {
        "input_schema": {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}},
        "retry": retry or FAST_RETRY,
        "steps": [
            {"id": "a", "transformer": "transform", "timeout_s": t, "inputs": {"n": "$.input.n"}},
            {"id": "hook", "transformer": hook, "depends_on": ["a"], "timeout_s": hook_timeout_s,
             "inputs": {"body": {"n": "$.steps.a.output.n", "tag": "hook-{{ $.input.n }}"}}},
            {"id": "side", "transformer": "transform", "depends_on": ["a"], "timeout_s": t,
             "inputs": {"double": ["$.steps.a.output.n", "$.steps.a.output.n"]}},
            {"id": "join", "transformer": "transform", "depends_on": ["hook", "side"], "timeout_s": t,
             "inputs": {"n": "$.input.n", "status": "$.steps.hook.output.status_code",
                        "side": "$.steps.side.output.double"}},
        ],
        "output": {"n": "$.steps.join.output.n", "status": "$.steps.join.output.status"},
    }


def doomed(broken: str) -> dict[str, Any]:
    """a -> broken (fails every attempt) -> never. Every job of it should fail with a reason."""
    t = STEP_TIMEOUT_S
    return {
        "retry": {"max_retries": 1, "initial_delay_s": 0.2, "max_delay_s": 1.0},
        "steps": [
            {"id": "a", "transformer": "transform", "timeout_s": t, "inputs": {"n": "$.input.n"},
             "retry": FAST_RETRY},
            {"id": "broken", "transformer": broken, "timeout_s": t, "inputs": {"n": "$.steps.a.output.n"}},
            {"id": "never", "transformer": "transform", "timeout_s": t,
             "inputs": {"x": "$.steps.broken.output"}},
        ],
    }
