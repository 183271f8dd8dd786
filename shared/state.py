"""The state machine's RPCs (SQL functions in supabase/migrations), each wrapped once
here under the SQL function's own name; `_async` marks the orchestrator's twins.

Rows that carry stored data (a claimed step's, a finishable job's) come as JSON text
and are decoded one by one, so one row Python cannot decode fails only its own step or
job (see UndecodableRow).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from postgrest import AsyncPostgrestClient, SyncPostgrestClient

from shared import db
from shared.protocol import ErrorType, Finish, Recorded, StepOutcome, StepRequest, TransformerRef
from supaflow_models import mapping

# A job's data is sent along with its last step (to build the final result there) only
# up to this size; a larger job is finished by finish_jobs, one call later.
MAX_FINISH_BYTES = 256 * 1024


class UndecodableRow(ValueError):
    """A stored row the engine cannot read: it fails its own step or job, nothing else."""


def decode_payload(text: str) -> dict[str, Any]:
    """One row's JSON payload, decoded on its own."""
    try:
        value = json.loads(text)
    except RecursionError as exc:
        raise UndecodableRow("its stored data is nested too deeply to read") from exc
    except ValueError as exc:
        raise UndecodableRow(f"its stored data is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise UndecodableRow("its stored data is not a JSON object")
    return value


@dataclass(frozen=True)
class StepPayload:
    """What a claimed step reads: its input mapping, the job's data, the transformer's config."""

    inputs: Any
    input_data: Any
    step_data: dict[str, Any]
    transformer_config: dict[str, Any]
    output_mapping: Any  # set for a job's last unfinished step (see protocol.Finish)


@dataclass(frozen=True)
class ClaimedStep:
    """One leased attempt; `payload` is decoded by `read`, step by step."""

    job_id: str
    step_id: str
    attempt: int
    lease_token: str
    timeout_s: int
    transformer_id: str
    transformer_type: str | None
    target_function: str | None
    payload: str

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ClaimedStep:
        return cls(
            job_id=row["job_id"], step_id=row["step_id"], attempt=row["attempt"],
            lease_token=row["lease_token"], timeout_s=row["timeout_s"],
            transformer_id=row["transformer_id"], transformer_type=row["transformer_type"],
            target_function=row["target_function"], payload=row["payload"],
        )

    def read(self) -> StepPayload:
        data = decode_payload(self.payload)
        return StepPayload(inputs=data.get("inputs") or {}, input_data=data.get("input_data") or {},
                           step_data=data.get("step_data") or {},
                           transformer_config=data.get("transformer_config") or {},
                           output_mapping=data.get("output_mapping"))

    def failed(self, error: str, *, retryable: bool, error_type: ErrorType) -> StepOutcome:
        return StepOutcome(job_id=self.job_id, step_id=self.step_id, lease_token=self.lease_token,
                           error=error, retryable=retryable, error_type=error_type)

    def log_keys(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "step_id": self.step_id, "attempt": self.attempt}


def prepare(step: ClaimedStep) -> tuple[StepRequest, bytes] | StepOutcome:
    """The executor request for a claimed step (the model, and its JSON); or, when it
    cannot be built, that step's permanent failure: whatever is wrong with a row is its
    own, never its batch's."""
    if not step.transformer_type or not step.target_function:
        return step.failed(f"unknown transformer {step.transformer_id!r}", retryable=False,
                           error_type="config")
    try:
        payload = step.read()
        inputs = mapping.resolve(payload.inputs, mapping_context(payload.input_data, payload.step_data))
        finish = None
        if payload.output_mapping is not None and len(step.payload) <= MAX_FINISH_BYTES:
            finish = Finish(output_mapping=payload.output_mapping, input_data=payload.input_data,
                            step_data=payload.step_data)
        request = StepRequest(
            job_id=uuid.UUID(step.job_id), step_id=step.step_id, attempt=step.attempt,
            lease_token=uuid.UUID(step.lease_token), timeout_s=step.timeout_s, inputs=inputs,
            transformer=TransformerRef(id=step.transformer_id, type=step.transformer_type,
                                       config=payload.transformer_config), finish=finish)
        return request, request.model_dump_json().encode()
    except mapping.MappingError as exc:
        return step.failed(f"inputs: {exc}", retryable=False, error_type="mapping")
    except RecursionError:
        return step.failed("inputs: nested too deeply to send", retryable=False,
                           error_type="mapping")
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with this row is its own
        return step.failed(f"cannot prepare the step: {type(exc).__name__}: {exc}", retryable=False,
                           error_type="mapping")


@dataclass(frozen=True)
class Prepared:
    """A claimed step ready to send: its request, and that request as JSON."""

    step: ClaimedStep
    request: StepRequest
    body: bytes


def prepare_all(claimed: list[ClaimedStep]) -> tuple[list[Prepared], list[StepOutcome]]:
    """The claimed steps that could be prepared, and the failures of those that could not."""
    ready: list[Prepared] = []
    failures: list[StepOutcome] = []
    for step in claimed:
        prepared = prepare(step)
        if isinstance(prepared, StepOutcome):
            failures.append(prepared)
        else:
            ready.append(Prepared(step, *prepared))
    return ready, failures


def mapping_context(input_data: Any, step_data: dict[str, Any]) -> dict[str, Any]:
    """What `$.input...` and `$.steps.<id>.output...` expressions read."""
    return {"input": input_data, "steps": {k: {"output": v} for k, v in step_data.items()}}


def final_entry(output_mapping: Any, input_data: Any, step_data: dict[str, Any]) -> dict[str, Any]:
    """How a job whose steps are all complete ends: {"final_result": ...} built by its
    output mapping (written out when the definition was stored), or {"error": ...}
    when its data cannot make one."""
    try:
        result = mapping.resolve(output_mapping, mapping_context(input_data, step_data))
        json.dumps(result, allow_nan=False)  # what is sent to SQL must encode
    except mapping.MappingError as exc:
        return {"error": f"output mapping: {exc}"}
    except RecursionError:
        return {"error": "final result: nested too deeply"}
    except Exception as exc:  # noqa: BLE001 - stored data that cannot make a result fails its job
        return {"error": f"final result: {exc}"}
    return {"final_result": result}


def finishing(job_id: str, payload: str) -> dict[str, Any]:
    """finish_jobs' entry for a job from its finishable_jobs / record_outcomes payload."""
    try:
        data = decode_payload(payload)
    except UndecodableRow as exc:
        return {"job_id": job_id, "error": f"final result: {exc}"}
    return {"job_id": job_id,
            **final_entry(data.get("output_mapping"), data.get("input_data"), data.get("step_data") or {})}


def _recorded(data: Any) -> list[Recorded]:
    return [Recorded.model_validate(row) for row in db.rows(data)]


def _finished(data: Any) -> dict[str, str]:
    """job id -> `completed` or `failed`, for the jobs this call ended."""
    return {str(row["job_id"]): str(row["status"]) for row in db.rows(data) if row["status"]}


# Executors (synchronous) --------------------------------------------------------

def record_outcomes(client: SyncPostgrestClient, outcomes: list[StepOutcome]) -> list[Recorded]:
    params: dict[str, Any] = {"p_outcomes": [o.as_sql() for o in outcomes]}
    return _recorded(client.rpc("record_outcomes", params).execute().data)


def record_and_claim(client: SyncPostgrestClient, outcomes: list[StepOutcome], target_function: str,
                     limit: int) -> tuple[list[Recorded], list[ClaimedStep]]:
    """record_outcomes, and in the same transaction a claim of the steps the completed
    ones made ready that run on `target_function`."""
    params: dict[str, Any] = {"p_outcomes": [o.as_sql() for o in outcomes],
                              "p_target_function": target_function, "p_limit": limit}
    data = db.obj(client.rpc("record_and_claim", params).execute().data)
    return (_recorded(data.get("recorded")),
            [ClaimedStep.from_row(r) for r in db.rows(data.get("claimed"))])


def finish_jobs(client: SyncPostgrestClient, jobs: list[dict[str, Any]]) -> dict[str, str]:
    params: dict[str, Any] = {"p_jobs": jobs}
    return _finished(client.rpc("finish_jobs", params).execute().data)


# The orchestrator (asynchronous) -------------------------------------------------

async def claim_steps_async(client: AsyncPostgrestClient, limit: int, pass_id: str | None = None,
                            alive_s: float = 0) -> list[ClaimedStep]:
    params: dict[str, Any] = {"p_limit": limit, "p_pass_id": pass_id, "p_alive_s": alive_s}
    response = await client.rpc("claim_steps", params).execute()
    return [ClaimedStep.from_row(r) for r in db.rows(response.data)]


async def begin_pass_async(client: AsyncPostgrestClient, pass_id: str, alive_s: float) -> bool:
    params: dict[str, Any] = {"p_pass_id": pass_id, "p_alive_s": alive_s}
    return bool((await client.rpc("begin_pass", params).execute()).data)


async def end_pass_async(client: AsyncPostgrestClient, pass_id: str) -> None:
    params: dict[str, Any] = {"p_pass_id": pass_id}
    await client.rpc("end_pass", params).execute()


async def record_outcomes_async(client: AsyncPostgrestClient,
                                outcomes: list[StepOutcome]) -> list[Recorded]:
    params: dict[str, Any] = {"p_outcomes": [o.as_sql() for o in outcomes]}
    return _recorded((await client.rpc("record_outcomes", params).execute()).data)


async def recover_expired_leases_async(client: AsyncPostgrestClient, limit: int = 100) -> int:
    params: dict[str, Any] = {"p_limit": limit}
    response = await client.rpc("recover_expired_leases", params).execute()
    return int(response.data or 0)  # type: ignore[arg-type]


async def finishable_jobs_async(client: AsyncPostgrestClient,
                                limit: int = 50) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"p_limit": limit, "p_job_id": None}
    response = await client.rpc("finishable_jobs", params).execute()
    return db.rows(response.data)


async def finish_jobs_async(client: AsyncPostgrestClient,
                            jobs: list[dict[str, Any]]) -> dict[str, str]:
    params: dict[str, Any] = {"p_jobs": jobs}
    return _finished((await client.rpc("finish_jobs", params).execute()).data)


async def wait_for_ready_async(client: AsyncPostgrestClient, wait_s: float) -> bool:
    params: dict[str, Any] = {"p_wait_s": wait_s}
    response = await client.rpc("wait_for_ready", params).execute()
    return bool(response.data)


async def next_due_in_async(client: AsyncPostgrestClient) -> float | None:
    response = await client.rpc("next_due_in", {}).execute()
    return None if response.data is None else float(response.data)  # type: ignore[arg-type]
