"""The orchestrator-executor protocol, typed once for both sides.

One request carries a batch of claimed steps for one executor function; the executor
runs them concurrently, records their outcomes itself (`record_outcomes`, each fenced
by its lease token) and answers with each step's outcome. The SQL's answer for a
recorded step is the same `Outcome`, decoded here and nowhere else.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Steps per executor request. The executor records each step's outcome as it ends, so
# a fast step never waits for a slow one in its batch. When the request itself outlasts
# API Gateway's 30 s limit (a batch with a long step, like a long step alone), the
# orchestrator gets no answer and the leases decide, as they always did.
MAX_BATCH = 32

# What happened to one recorded step: `stale` when its lease had moved on (nothing
# changed), `unrecorded` when the database could not be reached to record it (its
# lease decides).
Outcome = Literal["completed", "retry_scheduled", "failed", "stale", "unrecorded"]

# Why an attempt failed, counted by the metrics and alerts: what the executor met
# (timeout, network, http_4xx/http_5xx from a remote, input, config, provider: the
# model refused or answered badly), what the orchestrator met (mapping: the inputs
# cannot be built; dispatch: no executor took the step), what SQL found (output over
# the bounds, lease_expired), or `executor`: anything else.
ErrorType = Literal["timeout", "network", "http_4xx", "http_5xx", "input", "config", "provider",
                    "mapping", "dispatch", "output", "lease_expired", "executor"]


def http_error_type(status: int) -> ErrorType:
    """A remote's answer; no status at all (0) is the executor's to explain."""
    return "executor" if status <= 0 else "http_5xx" if status >= 500 else "http_4xx"


class TransformerRef(BaseModel):
    id: str
    type: str
    config: dict[str, Any] = Field(default_factory=dict)


class Finish(BaseModel):
    """Sent with a job's last unfinished step: what its final result is built from, so
    the executor finishes the job in the call that records the step."""

    output_mapping: Any
    input_data: Any
    step_data: dict[str, Any]


class StepRequest(BaseModel):
    """One leased attempt, with its inputs already resolved by the orchestrator."""

    model_config = ConfigDict(extra="ignore")

    job_id: uuid.UUID
    step_id: str
    attempt: int = Field(ge=1)
    lease_token: uuid.UUID
    timeout_s: int = Field(ge=1, le=900)
    transformer: TransformerRef
    inputs: Any = None
    finish: Finish | None = None


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: list[StepRequest] = Field(min_length=1, max_length=MAX_BATCH)


class StepResult(BaseModel):
    job_id: str
    step_id: str
    outcome: Outcome


class BatchResponse(BaseModel):
    results: list[StepResult]


class StepOutcome(BaseModel):
    """What an attempt produced, as `record_outcomes` takes it: an output, or an error."""

    job_id: str
    step_id: str
    lease_token: str
    output: Any = None
    error: str | None = None
    retryable: bool = True
    error_type: ErrorType = "executor"
    # The job's final result ({"final_result": ...}, or {"error": ...} when it cannot
    # be built), when this step was sent with `finish`.
    final: dict[str, Any] | None = None

    def as_sql(self) -> dict[str, Any]:
        """The JSON `record_outcomes` reads: `error` present means a failed attempt."""
        if self.error is None:
            completed = {"job_id": self.job_id, "step_id": self.step_id,
                         "lease_token": self.lease_token, "output": self.output}
            return completed if self.final is None else {**completed, "final": self.final}
        return {"job_id": self.job_id, "step_id": self.step_id, "lease_token": self.lease_token,
                "error": self.error, "retryable": self.retryable, "error_type": self.error_type}


class Recorded(BaseModel):
    """`record_outcomes`' row for one step. When that step was its job's last, either
    the job was finished with it (`job_status`) or `finish` carries what finishing the
    job needs (see state.finish_jobs)."""

    job_id: str
    step_id: str
    outcome: Outcome
    finish: str | None = None
    job_status: str | None = None
