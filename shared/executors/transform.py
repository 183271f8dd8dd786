"""The transform executor: no I/O. Its output is its inputs, already shaped by the step's mapping.

Users reshape data between steps with it; tests and benchmarks use it as the no-op step.
A config `fail` key makes it fail on purpose (retryable or not), for trying retry policies.
"""

from __future__ import annotations

from typing import Any

from shared.executors.base import StepContext, StepError


def execute(config: dict[str, Any], inputs: Any, ctx: StepContext) -> Any:
    failure = config.get("fail")
    if isinstance(failure, dict) and ctx.attempt <= int(failure.get("attempts", 1 << 30)):
        raise StepError(str(failure.get("message", "failed on purpose")),
                        retryable=bool(failure.get("retryable", True)))
    return inputs
