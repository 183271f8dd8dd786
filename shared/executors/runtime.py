"""The glue every executor function shares: check the caller, run the step, record the outcome.

The executor records the outcome itself, with the lease token, so a result is
written once, by the holder of the current lease, even if the orchestrator
that dispatched it has gone.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
from postgrest import SyncPostgrestClient
from postgrest.exceptions import APIError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared import api, auth, db, state
from shared.errors import ApiError, bad_request
from shared.executors.base import StepContext, StepError
from shared.log import logger
from shared.settings import settings

Execute = Callable[[dict[str, Any], Any, StepContext], Any]
RECORD_RETRY_DELAYS_S = (0.2, 0.5, 1.0, 2.0)


class TransformerRef(BaseModel):
    id: str
    type: str
    config: dict[str, Any] = Field(default_factory=dict)


class StepRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    job_id: uuid.UUID
    step_id: str
    attempt: int = Field(ge=1)
    lease_token: uuid.UUID
    timeout_s: int = Field(ge=1, le=900)
    transformer: TransformerRef
    inputs: Any = None


def _record(call: Callable[[], dict[str, Any]], keys: dict[str, Any]) -> dict[str, Any]:
    """Retry the recording RPC through a PostgREST or Postgres restart."""
    for delay in (*RECORD_RETRY_DELAYS_S, None):
        try:
            return call()
        except (APIError, httpx.HTTPError) as exc:
            if delay is None:
                raise ApiError(503, "record_failed", "could not record the outcome") from exc
            logger.warning("recording the outcome failed; retrying",
                               extra={**keys, "error": str(exc)})
            time.sleep(delay)
    raise AssertionError("unreachable")


def check_output(output: Any) -> None:
    """An output that is not JSON Postgres can store will not become one on a retry.
    (How large and deep a stored output may be is complete_step's rule, in SQL.)"""
    try:
        json.dumps(output, allow_nan=False)
    except RecursionError as exc:
        raise StepError("the step's output is nested too deeply to encode", retryable=False) from exc
    except (TypeError, ValueError) as exc:
        raise StepError(f"the step's output is not JSON: {exc}", retryable=False) from exc


def _outcome(recorded: dict[str, Any]) -> str:
    if not recorded.get("accepted"):
        return "stale"
    if recorded.get("retry_at"):
        return "retry_scheduled"
    if recorded.get("job_failed"):
        return "failed"
    return "completed"


def handle(request: api.Request, execute: Execute) -> api.Reply:
    auth.verify_internal(request.headers)
    try:
        req = StepRequest.model_validate(request.json_object(settings().max_internal_body_bytes))
    except ValidationError as exc:
        raise bad_request(f"invalid step request: {exc.errors()[0]['msg']}") from exc
    ctx = StepContext(job_id=str(req.job_id), step_id=req.step_id, attempt=req.attempt,
                      transformer_id=req.transformer.id, timeout_s=req.timeout_s)
    keys = ctx.log_keys()
    client = db.as_service()
    args = (str(req.job_id), req.step_id, str(req.lease_token))
    logger.info("step started", extra={**keys, "transformer": req.transformer.id})
    try:
        output = execute(req.transformer.config, req.inputs, ctx)
        check_output(output)
    except StepError as exc:
        message, retryable = exc.message, exc.retryable
        logger.warning("step failed", extra={**keys, "error": message, "retryable": retryable})
        recorded = _record(lambda: state.fail(client, *args, message, retryable), keys)
    except Exception as exc:  # noqa: BLE001 - any bug in a step is a failed, retryable attempt
        logger.exception("step raised", extra=keys)
        message = f"{type(exc).__name__}: {exc}"
        recorded = _record(lambda: state.fail(client, *args, message, True), keys)
    else:
        recorded = _record(lambda: state.complete(client, *args, output), keys)
    outcome = _outcome(recorded)
    logger.info("step recorded", extra={**keys, "outcome": outcome,
                                            "duration_ms": int((ctx.timeout_s - ctx.remaining_s()) * 1000)})
    finishable = bool(recorded.get("finish")) and not _finish_job(client, recorded["finish"], keys)
    return api.Reply(200, {"outcome": outcome, "finishable": finishable})


def _finish_job(client: SyncPostgrestClient, job: dict[str, Any], keys: dict[str, Any]) -> bool:
    """This step was the job's last: finish the job now. False leaves it to the orchestrator."""
    try:
        finished = state.finish(client, job)
    except Exception as exc:  # noqa: BLE001 - the step is recorded; the sweep finishes the job
        logger.warning("finishing the job failed; the orchestrator will",
                           extra={**keys, "error": repr(exc)})
        return False
    if finished:
        logger.info(f"job {finished}", extra={"job_id": keys["job_id"]})
    return True
