"""The glue every executor function shares: check the caller, run a batch of steps
concurrently, record their outcomes, finish the jobs they completed.

The executor records outcomes itself, each fenced by its lease token, so a result is
written once, by the holder of the current lease, even if the orchestrator that
dispatched it has gone. Outcomes are recorded as steps end, fast siblings together
(one RPC), so no step waits for a slower one in its batch. A job's last step comes with
what its final result is built from, so the job is finished in that same RPC (a job
whose last step was not foreseen, e.g. two branches ending together, is finished in
one more, `finish_jobs`). The same RPC that
records completions claims the steps they made ready for this same executor
(`record_and_claim`), which run here at once (for CHAIN_BUDGET_S): a chain of steps
does not go back to the orchestrator between each two.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import httpx
from postgrest import SyncPostgrestClient
from postgrest.exceptions import APIError
from pydantic import ValidationError

from shared import api, auth, db, state
from shared.errors import bad_request
from shared.executors.base import StepContext, StepError
from shared.log import logger
from shared.protocol import (
    MAX_BATCH,
    BatchRequest,
    BatchResponse,
    Recorded,
    StepOutcome,
    StepRequest,
    StepResult,
)
from shared.settings import settings

Execute = Callable[[dict[str, Any], Any, StepContext], Any]
RECORD_RETRY_DELAYS_S = (0.2, 0.5, 1.0, 2.0)
# After one step of a batch ends, wait this long for siblings to end too, and record
# them in the same RPC.
RECORD_GRACE_S = 0.005
# How long an executor request keeps running the steps its own steps made ready.
CHAIN_BUDGET_S = 5.0


def check_output(output: Any) -> None:
    """An output that is not JSON Postgres can store will not become one on a retry.
    (How large and deep a stored output may be is complete_step's rule, in SQL.)"""
    try:
        json.dumps(output, allow_nan=False)
    except RecursionError as exc:
        raise StepError("the step's output is nested too deeply to encode", retryable=False,
                        error_type="output") from exc
    except (TypeError, ValueError) as exc:
        raise StepError(f"the step's output is not JSON: {exc}", retryable=False,
                        error_type="output") from exc


def run_step(execute: Execute, step: StepRequest) -> StepOutcome:
    """One attempt, start to outcome; never raises."""
    ctx = StepContext(job_id=str(step.job_id), step_id=step.step_id, attempt=step.attempt,
                      transformer_id=step.transformer.id, timeout_s=step.timeout_s)
    keys = {**ctx.log_keys(), "transformer": step.transformer.id}
    data = settings().log_step_data
    job_id, lease_token = str(step.job_id), str(step.lease_token)
    logger.info("step started", extra={**keys, **({"inputs": step.inputs} if data else {})})
    try:
        output = execute(step.transformer.config, step.inputs, ctx)
        check_output(output)
    except StepError as exc:
        logger.warning("step failed", extra={**keys, "error": exc.message, "retryable": exc.retryable,
                                             "error_type": exc.error_type,
                                             "duration_s": round(ctx.elapsed_s(), 3)})
        return StepOutcome(job_id=job_id, step_id=step.step_id, lease_token=lease_token,
                           error=exc.message, retryable=exc.retryable, error_type=exc.error_type)
    except Exception as exc:  # noqa: BLE001 - any bug in a step is a failed, retryable attempt
        logger.exception("step raised", extra={**keys, "error_type": "executor",
                                               "duration_s": round(ctx.elapsed_s(), 3)})
        return StepOutcome(job_id=job_id, step_id=step.step_id, lease_token=lease_token,
                           error=f"{type(exc).__name__}: {exc}", retryable=True)
    logger.info("step succeeded", extra={**keys, "duration_s": round(ctx.elapsed_s(), 3),
                                         **({"output": output} if data else {})})
    final = None
    if step.finish is not None:  # the job's last step: its final result is built here
        final = state.final_entry(step.finish.output_mapping, step.finish.input_data,
                                  {**step.finish.step_data, step.step_id: output})
    return StepOutcome(job_id=job_id, step_id=step.step_id, lease_token=lease_token, output=output,
                       final=final)


def _record(client: SyncPostgrestClient, outcomes: list[StepOutcome],
            claim_for: str | None) -> tuple[list[Recorded], list[StepRequest]]:
    """Record the outcomes (and claim what they made ready for `claim_for`), retried
    through a PostgREST or Postgres restart; if it never gets through, the steps are
    `unrecorded` and their leases decide."""
    for delay in (*RECORD_RETRY_DELAYS_S, None):
        try:
            if claim_for is None:
                return state.record_outcomes(client, outcomes), []
            recorded, claimed = state.record_and_claim(client, outcomes, claim_for, MAX_BATCH)
            ready, failures = state.prepare_all(claimed)
            if failures:
                record_and_finish(client, failures)
            return recorded, [p.request for p in ready]
        except (APIError, httpx.HTTPError) as exc:  # (nothing was recorded: retry it all)
            if delay is None:
                logger.error("recording outcomes failed; the leases will decide",
                             extra={"steps": [o.step_id for o in outcomes], "error": str(exc)})
                break
            logger.warning("recording outcomes failed; retrying", extra={"error": str(exc)})
            time.sleep(delay)
    return [Recorded(job_id=o.job_id, step_id=o.step_id, outcome="unrecorded") for o in outcomes], []


def _finish(client: SyncPostgrestClient, recorded: list[Recorded]) -> None:
    """Finish the jobs whose last step was recorded here. A failure is left to the
    orchestrator's scheduled sweep: the steps are recorded, nothing is lost."""
    jobs = [state.finishing(r.job_id, r.finish) for r in recorded if r.finish is not None]
    if not jobs:
        return
    try:
        ended = state.finish_jobs(client, jobs)
    except Exception as exc:  # noqa: BLE001 - the sweep finishes what this could not
        logger.warning("finishing jobs failed; the orchestrator's sweep will",
                       extra={"jobs": [j["job_id"] for j in jobs], "error": repr(exc)})
        return
    for job_id, status in ended.items():
        logger.info(f"job {status}", extra={"job_id": job_id})


def record_and_finish(client: SyncPostgrestClient, outcomes: list[StepOutcome],
                      claim_for: str | None = None) -> tuple[list[Recorded], list[StepRequest]]:
    """Record the outcomes, finish the jobs they completed; with `claim_for`, also claim
    (in the same transaction) the steps they made ready on that executor, to run next."""
    recorded, claimed = _record(client, outcomes, claim_for)
    for r in recorded:
        logger.info("step recorded", extra={"job_id": r.job_id, "step_id": r.step_id,
                                            "outcome": r.outcome})
        if r.job_status is not None:
            logger.info(f"job {r.job_status}", extra={"job_id": r.job_id})
    _finish(client, recorded)
    return recorded, claimed


def run_batch(execute: Execute, steps: list[StepRequest], target_function: str) -> list[Recorded]:
    """Run the steps concurrently; record each group of steps that end together; for
    CHAIN_BUDGET_S, run here the steps they make ready for this same executor."""
    client = db.as_service()
    started = time.monotonic()
    recorded: list[Recorded] = []
    with ThreadPoolExecutor(max_workers=MAX_BATCH, thread_name_prefix="step") as pool:
        pending: set[Future[StepOutcome]] = {pool.submit(run_step, execute, s) for s in steps}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            if pending:
                more, pending = wait(pending, timeout=RECORD_GRACE_S)
                done |= more
            chaining = time.monotonic() - started < CHAIN_BUDGET_S
            group, claimed = record_and_finish(client, [f.result() for f in done],
                                               target_function if chaining else None)
            recorded += group
            pending |= {pool.submit(run_step, execute, s) for s in claimed}
    return recorded


def handle(request: api.Request, execute: Execute) -> api.Reply:
    auth.verify_internal(request.headers)
    try:
        batch = BatchRequest.model_validate(request.json_object(settings().max_internal_body_bytes))
    except ValidationError as exc:
        raise bad_request(f"invalid step batch: {exc.errors()[0]['msg']}") from exc
    # This function's name, from its route (/internal/executors/transform -> execute-transform).
    target_function = "execute-" + request.event.path.rstrip("/").rsplit("/", 1)[-1]
    recorded = run_batch(execute, batch.steps, target_function)
    results = [StepResult(job_id=r.job_id, step_id=r.step_id, outcome=r.outcome) for r in recorded]
    return api.Reply(200, BatchResponse(results=results).model_dump())
