"""The state machine's RPCs (SQL functions in supabase/migrations), each named once here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from postgrest import AsyncPostgrestClient, SyncPostgrestClient

from shared import db, mapping


class UndecodableRow(ValueError):
    """A stored row the engine cannot read: it fails its own step or job, nothing else."""


def decode_payload(text: str) -> dict[str, Any]:
    """One row's JSON payload. Rows come as text so that each is decoded on its own:
    one row too deep for Python's decoder must not take its batch down with it."""
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
                           transformer_config=data.get("transformer_config") or {})

    def log_keys(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "step_id": self.step_id, "attempt": self.attempt}


def mapping_context(input_data: Any, step_data: dict[str, Any]) -> dict[str, Any]:
    """What `$.input...` and `$.steps.<id>.output...` expressions read."""
    return {"input": input_data, "steps": {k: {"output": v} for k, v in step_data.items()}}


def final_result(job: dict[str, Any]) -> Any:
    """The workflow's output mapping, else the last listed step's output."""
    data = decode_payload(job["payload"])
    output = data.get("output_mapping")
    if output is None:
        output = f"$.steps.{data.get('last_step_id')}.output"
    return mapping.resolve(output, mapping_context(data.get("input_data"), data.get("step_data") or {}))


def finish_call(job: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The RPC that ends a job whose steps are all complete: finish_job with its
    final_result, or fail_job when it cannot be built (an output mapping that does
    not resolve, stored data that cannot be read)."""
    try:
        result = final_result(job)
        json.dumps(result, allow_nan=False)  # what finish_job is sent must encode
    except mapping.MappingError as exc:
        return "fail_job", {"p_job_id": job["job_id"], "p_message": f"output mapping: {exc}"}
    except RecursionError:
        return "fail_job", {"p_job_id": job["job_id"], "p_message": "final result: nested too deeply"}
    except Exception as exc:  # noqa: BLE001 - stored data that cannot make a result fails its job
        return "fail_job", {"p_job_id": job["job_id"], "p_message": f"final result: {exc}"}
    return "finish_job", {"p_job_id": job["job_id"], "p_final_result": result}


def _finish_outcome(fn: str, data: Any) -> str:
    """`completed`, `failed` (the final result could not be built or is over the bounds),
    or `` when another caller finished the job first."""
    if fn == "fail_job":
        return "failed"
    answer = db.obj(data)
    return str(answer.get("status", "completed")) if answer.get("accepted") else ""


# Executors (synchronous) --------------------------------------------------------

def complete(client: SyncPostgrestClient, job_id: str, step_id: str, lease_token: str,
             output: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"p_job_id": job_id, "p_step_id": step_id,
                              "p_lease_token": lease_token, "p_output": output}
    return db.obj(client.rpc("complete_step", params).execute().data)


def finish(client: SyncPostgrestClient, job: dict[str, Any]) -> str:
    """End the job whose last step this executor completed (see _finish_outcome)."""
    fn, params = finish_call(job)
    return _finish_outcome(fn, client.rpc(fn, params).execute().data)


def fail(client: SyncPostgrestClient, job_id: str, step_id: str, lease_token: str,
         error: str, retryable: bool) -> dict[str, Any]:
    return db.obj(client.rpc("fail_step", _fail_params(
        job_id, step_id, lease_token, error, retryable)).execute().data)


def _fail_params(job_id: str, step_id: str, lease_token: str, error: str,
                 retryable: bool) -> dict[str, Any]:
    return {"p_job_id": job_id, "p_step_id": step_id, "p_lease_token": lease_token,
            "p_error": error, "p_retryable": retryable}


# The orchestrator (asynchronous) -------------------------------------------------

async def claim(client: AsyncPostgrestClient, limit: int) -> list[ClaimedStep]:
    params: dict[str, Any] = {"p_limit": limit}
    response = await client.rpc("claim_steps", params).execute()
    return [ClaimedStep.from_row(r) for r in db.rows(response.data)]


async def recover_expired(client: AsyncPostgrestClient, limit: int = 100) -> int:
    params: dict[str, Any] = {"p_limit": limit}
    response = await client.rpc("recover_expired_leases", params).execute()
    return int(response.data or 0)  # type: ignore[arg-type]


async def fail_async(client: AsyncPostgrestClient, step: ClaimedStep, error: str,
                     retryable: bool) -> dict[str, Any]:
    params = _fail_params(step.job_id, step.step_id, step.lease_token, error, retryable)
    return db.obj((await client.rpc("fail_step", params).execute()).data)


async def finishable(client: AsyncPostgrestClient, limit: int = 50,
                     job_id: str | None = None) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"p_limit": limit, "p_job_id": job_id}
    response = await client.rpc("finishable_jobs", params).execute()
    return db.rows(response.data)


async def finish_async(client: AsyncPostgrestClient, job: dict[str, Any]) -> str:
    """finish() for the orchestrator, which sweeps up jobs whose finisher died."""
    fn, params = finish_call(job)
    return _finish_outcome(fn, (await client.rpc(fn, params).execute()).data)


async def next_due_in(client: AsyncPostgrestClient) -> float | None:
    response = await client.rpc("next_due_in", {}).execute()
    return None if response.data is None else float(response.data)  # type: ignore[arg-type]
