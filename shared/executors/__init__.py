"""One module per transformer type; each exposes `execute(config, inputs, ctx) -> dict`,
and parses its config with its type's model (supaflow_models.transformers) first."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from shared.executors.base import StepError
from supaflow_models.transformers import config_problems


def parse_config[M: BaseModel](model: type[M], config: Any) -> M:
    """The executor's side: a config its model refuses fails the step for good."""
    try:
        return model.model_validate(config)
    except ValidationError as exc:
        raise StepError("; ".join(config_problems(model, exc)), retryable=False,
                        error_type="config") from None

