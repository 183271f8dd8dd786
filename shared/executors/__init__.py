"""One module per transformer type; each exposes `execute(config, inputs, ctx) -> dict`.

The registry below names each type, the executor function that runs it and the model its
`config` must fit (shared.executors.configs). Importing it is cheap: the config models need
pydantic and jsonschema only; the executor modules (boto3, google-genai) are not imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from shared.executors.configs import (
    GeminiPromptConfig,
    HttpDownloadConfig,
    TransformConfig,
    WebhookCallConfig,
    config_problems,
)


@dataclass(frozen=True)
class TransformerType:
    name: str  # "http_download", a transformer's `type`
    function: str  # "execute-http-download", the executor function that runs it
    config_model: type[BaseModel]


TRANSFORMER_TYPES: dict[str, TransformerType] = {
    t.name: t
    for t in (
        TransformerType("transform", "execute-transform", TransformConfig),
        TransformerType("http_download", "execute-http-download", HttpDownloadConfig),
        TransformerType("gemini_prompt", "execute-gemini-prompt", GeminiPromptConfig),
        TransformerType("webhook_call", "execute-webhook-call", WebhookCallConfig),
    )
}


class ConfigError(ValueError):
    """A transformer config its type refuses; `problems` has one `config.<field>: <reason>`
    line per problem (`type: ...` for an unknown type)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def validate_config(type_name: str, config: Any) -> dict[str, Any]:
    """`config` as given (defaults not filled in) when it fits `type_name`'s model, which is
    the model its executor parses it with; else ConfigError naming each bad field."""
    kind = TRANSFORMER_TYPES.get(type_name)
    if kind is None:
        known = ", ".join(sorted(TRANSFORMER_TYPES))
        raise ConfigError([f"type: unknown transformer type {type_name!r} (known: {known})"])
    try:
        kind.config_model.model_validate(config)
    except ValidationError as exc:
        raise ConfigError(config_problems(kind.config_model, exc)) from None
    return dict(config)
