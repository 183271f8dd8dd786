"""The executor protocol's Python side, without a stack: what a claimed step becomes
(its request, and whether the job's final result travels with it), how an executor
builds that final result, and how claimed steps are cut into requests."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from shared import orchestrator, state
from shared.executors import runtime
from shared.executors.base import StepContext
from shared.protocol import MAX_BATCH, StepRequest
from shared.settings import settings


def claimed(payload: dict[str, Any], *, step_id: str = "b",
            target: str = "execute-transform") -> state.ClaimedStep:
    return state.ClaimedStep(
        job_id=str(uuid.uuid4()), step_id=step_id, attempt=1, lease_token=str(uuid.uuid4()),
        timeout_s=30, transformer_id="transform", transformer_type="transform",
        target_function=target, payload=json.dumps(payload))


def payload(output_mapping: Any = None, padding: int = 0) -> dict[str, Any]:
    return {"inputs": {"n": "$.steps.a.output.n", "pad": "$.input.pad"},
            "input_data": {"pad": "x" * padding},
            "step_data": {"a": {"n": 1}}, "transformer_config": {},
            "output_mapping": output_mapping}


def request_of(step: state.ClaimedStep) -> StepRequest:
    prepared = state.prepare(step)
    assert isinstance(prepared, tuple), prepared
    return prepared[0]


def test_only_a_jobs_last_step_carries_what_its_final_result_is_built_from() -> None:
    assert request_of(claimed(payload())).finish is None
    last = request_of(claimed(payload({"a": "$.steps.a.output", "b": "$.steps.b.output"})))
    assert last.finish is not None and last.finish.step_data == {"a": {"n": 1}}
    big = request_of(claimed(payload("$.steps.b.output", padding=state.MAX_FINISH_BYTES)))
    assert big.finish is None, "a large job is finished one call later, by finish_jobs"


def test_the_executor_builds_the_final_result_with_the_steps_own_output() -> None:
    def double(_config: dict[str, Any], inputs: Any, _ctx: StepContext) -> Any:
        return {"n": inputs["n"] * 2}

    last = request_of(claimed(payload({"a": "$.steps.a.output.n", "b": "$.steps.b.output.n"})))
    outcome = runtime.run_step(double, last)
    assert outcome.output == {"n": 2} and outcome.final == {"final_result": {"a": 1, "b": 2}}
    wrong = request_of(claimed(payload("$.steps.b.output.missing")))
    failed = runtime.run_step(double, wrong).final
    assert failed is not None and failed["error"].startswith("output mapping:")
    not_last = runtime.run_step(double, request_of(claimed(payload())))
    assert not_last.final is None and "final" not in not_last.as_sql()


def test_claimed_steps_are_cut_into_requests_within_the_executors_limits(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPAFLOW_MAX_INTERNAL_BODY_BYTES", "20000")
    settings.cache_clear()
    steps = [claimed(payload(padding=3000)) for _ in range(10)]
    steps += [claimed(payload(), target="execute-webhook-call") for _ in range(MAX_BATCH + 1)]
    steps.append(claimed(payload(padding=30000)))
    batches, failures = orchestrator.Pass.batches(steps)
    assert [f.step_id for f in failures] == ["b"] and failures[0].retryable is False
    assert failures[0].error is not None and "over the executor's limit" in failures[0].error
    for batch in batches:
        assert len(batch.body()) <= 20000 and len(batch.steps) <= MAX_BATCH
        assert json.loads(batch.body())["steps"]
    by_target = {b.target for b in batches}
    assert by_target == {"execute-transform", "execute-webhook-call"}
    assert sum(len(b.steps) for b in batches) == len(steps) - 1
    assert sum(b.target == "execute-transform" for b in batches) >= 2, "3 KiB steps in 20 KB requests"
