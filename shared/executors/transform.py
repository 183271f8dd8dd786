"""The transform executor: no I/O. Its output is its inputs, already shaped by the step's mapping.

Users reshape data between steps with it; tests and benchmarks use it as the no-op step.
A config `fail` key makes it fail on purpose (retryable or not), for trying retry policies.
"""

from __future__ import annotations

from typing import Any

from shared.executors import parse_config
from shared.executors.base import StepContext, StepError
from supaflow_models.transformers import TransformConfig


def execute(config: dict[str, Any], inputs: Any, ctx: StepContext) -> Any:
    failure = parse_config(TransformConfig, config).fail
    if failure is not None and (failure.attempts is None or ctx.attempt <= failure.attempts):
        raise StepError(failure.message, retryable=failure.retryable)
    return inputs
