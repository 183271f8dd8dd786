"""What every executor shares: the step it runs and how it reports a failure."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from shared.protocol import ErrorType


class StepError(Exception):
    """A step failed. `retryable` decides between another attempt and failing the job;
    `error_type` is what the metrics count it as."""

    def __init__(self, message: str, *, retryable: bool, error_type: ErrorType = "executor") -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.error_type = error_type


@dataclass(frozen=True)
class StepContext:
    """Identity and time budget of one attempt of one step."""

    job_id: str
    step_id: str
    attempt: int
    transformer_id: str
    timeout_s: float
    started: float = field(default_factory=time.monotonic)

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def remaining_s(self) -> float:
        return max(0.0, self.timeout_s - self.elapsed_s())

    def log_keys(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "step_id": self.step_id, "attempt": self.attempt}
