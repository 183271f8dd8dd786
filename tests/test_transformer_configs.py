"""Transformer configs: each type's model (supaflow_models.transformers), the registry's
`validate_config`, and the executors refusing a bad config with the same message.
Plain unit tests: no stack."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from shared.executors import gemini_prompt, http_download, transform, webhook_call
from shared.executors.base import StepContext, StepError
from stack.config import REPO
from supaflow_client.files import load_all
from supaflow_models.transformers import (
    KEY_PLACEHOLDERS,
    TRANSFORMER_TYPES,
    ConfigError,
    GeminiPromptConfig,
    HttpDownloadConfig,
    TransformConfig,
    WebhookCallConfig,
    validate_config,
)

EXAMPLES = REPO / "examples"
DOWNLOAD = {"bucket": "audio"}
GEMINI = {"model": "gemini-2.5-flash", "prompt": "Transcribe the audio."}
WEBHOOK = {"url": "https://hooks.example.com/in", "secret_env_var": "SUPAFLOW_WEBHOOK_SECRET"}
SECRET_LOOKING = ["AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY", "whsec_live_1234", "my_key",
                  "1KEY", "SECRET KEY", "A" * 129, ""]


def problems(type_name: str, config: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate_config(type_name, config)
    assert str(info.value) == "; ".join(info.value.problems)
    return info.value.problems


def only_problem(type_name: str, config: Any) -> str:
    [problem] = problems(type_name, config)
    return problem


# --------------------------------------------------------------------------- the registry


def test_example_transformers_are_valid() -> None:
    found = [item for item in load_all([EXAMPLES]) if item.kind == "transformer"]
    assert found, "the examples have transformers"
    for item in found:
        assert validate_config(item.body["type"], item.body["config"]) == item.body["config"]


def test_every_type_has_its_executor_function() -> None:
    template = (REPO / "template.yaml").read_text()
    assert set(TRANSFORMER_TYPES) == {"transform", "http_download", "gemini_prompt", "webhook_call"}
    for name, kind in TRANSFORMER_TYPES.items():
        assert kind.name == name
        assert kind.function == "execute-" + name.replace("_", "-")  # as testkit names them
        assert (REPO / "functions" / kind.function / "app.py").is_file()
        assert f"functions/{kind.function}/" in template


def test_valid_config_is_returned_as_given() -> None:
    assert validate_config("http_download", DOWNLOAD) == DOWNLOAD  # no defaults filled in
    assert validate_config("transform", {}) == {}
    assert validate_config("webhook_call", WEBHOOK) == WEBHOOK


def test_unknown_type_names_type_and_the_known_ones() -> None:
    problem = only_problem("http-download", {})
    assert problem.startswith("type: ")
    assert "'http-download'" in problem
    assert all(name in problem for name in TRANSFORMER_TYPES)


@pytest.mark.parametrize("config", [[], "x", None, 3])
def test_config_must_be_an_object(config: Any) -> None:
    assert only_problem("transform", config) == "config: must be a JSON object"


@pytest.mark.parametrize(
    ("type_name", "config"),
    [("http_download", DOWNLOAD), ("gemini_prompt", GEMINI), ("webhook_call", WEBHOOK),
     ("transform", {})],
)
def test_unknown_field_is_refused_naming_it(type_name: str, config: dict[str, Any]) -> None:
    problem = only_problem(type_name, {**config, "colour": "blue"})
    assert problem.startswith("config.colour: is not a known field (known: ")
    model = TRANSFORMER_TYPES[type_name].config_model
    assert "api_key," not in problem and "secret," not in problem  # not offered as fields
    assert all(name in problem for name, f in model.model_fields.items() if not f.exclude)


def test_every_problem_is_reported() -> None:
    found = problems("http_download", {"bucket": 3, "max_bytes": "1", "timeout_s": 0, "x": 1})
    assert [p.split(":", 1)[0] for p in found] == [
        "config.bucket", "config.max_bytes", "config.timeout_s", "config.x"]


# --------------------------------------------------------------------------- http_download


def test_http_download_defaults_are_todays() -> None:
    cfg = HttpDownloadConfig.model_validate(DOWNLOAD)
    assert cfg.key_template == "{job_id}/{step_id}/{filename}"
    assert cfg.max_bytes == 100 * 1024 * 1024
    assert cfg.timeout_s == 60.0
    assert cfg.allowed_content_types is None and cfg.allow_hosts is None


@pytest.mark.parametrize(
    ("config", "field", "reason"),
    [
        ({}, "bucket", "is required"),
        ({"bucket": ""}, "bucket", "at least 1 character"),
        ({"bucket": "audio/in"}, "bucket", "must not contain /"),
        ({"max_bytes": "100"}, "max_bytes", "valid integer"),
        ({"max_bytes": 1.5}, "max_bytes", "valid integer"),
        ({"max_bytes": True}, "max_bytes", "valid integer"),
        ({"max_bytes": 0}, "max_bytes", "greater than or equal to 1"),
        ({"max_bytes": 11 * 1024**3}, "max_bytes", "less than or equal to"),
        ({"timeout_s": "60"}, "timeout_s", "valid number"),
        ({"timeout_s": 0}, "timeout_s", "greater than 0"),
        ({"timeout_s": 901}, "timeout_s", "less than or equal to 900"),
        ({"allowed_content_types": "audio/*"}, "allowed_content_types", "valid list"),
        ({"allowed_content_types": ["audio"]}, "allowed_content_types.0", "media type pattern"),
        ({"allow_hosts": "a.example.com"}, "allow_hosts", "valid list"),
        ({"allow_hosts": ["https://a.example.com/"]}, "allow_hosts.0", "not a URL"),
        ({"allow_hosts": ["ok.example.com", "a.example.com:99999"]}, "allow_hosts.1", "host name"),
        ({"key_template": ""}, "key_template", "at least 1 character"),
        ({"key_template": "//"}, "key_template", "empty key"),
    ],
)
def test_http_download_refuses(config: dict[str, Any], field: str, reason: str) -> None:
    problem = only_problem("http_download", {**DOWNLOAD, **config} if config else {})
    assert problem.startswith(f"config.{field}: ") and reason in problem


def test_key_template_placeholders() -> None:
    problem = only_problem("http_download", {**DOWNLOAD, "key_template": "{job_id}/{nope}/{}"})
    assert problem == ("config.key_template: placeholder {}, {nope} is not one of "
                       "{attempt}, {filename}, {job_id}, {step_id}")
    every = "/".join(f"{{{name}}}" for name in sorted(KEY_PLACEHOLDERS))
    validate_config("http_download", {**DOWNLOAD, "key_template": every})
    # Only `{word}` is a placeholder: other braces are literal, as when the key is rendered.
    validate_config("http_download", {**DOWNLOAD, "key_template": "{job-id}/{job_id"})


def test_allow_hosts_forms_netguard_matches() -> None:
    hosts = ["files.example.com", "Files.Example.COM.", "127.0.0.1:8080", "[::1]:8080", "::1",
             "minio_internal", "10.0.0.5"]
    validate_config("http_download", {**DOWNLOAD, "allow_hosts": hosts})
    validate_config("webhook_call", {**WEBHOOK, "allow_hosts": hosts})


def test_content_type_patterns() -> None:
    patterns = ["audio/*", "*/*", "*", "application/octet-stream", " Audio/MPEG ", "application/vnd.x+json"]
    validate_config("http_download", {**DOWNLOAD, "allowed_content_types": patterns})


# --------------------------------------------------------------------------- gemini_prompt


def test_gemini_defaults_are_todays() -> None:
    cfg = GeminiPromptConfig.model_validate({"model": "m"})
    assert cfg.api_key_env_var == "GEMINI_API_KEY"
    assert cfg.inline_max_bytes == 14 * 1024 * 1024
    assert cfg.timeout_s is None and cfg.temperature is None and cfg.response_schema is None
    assert cfg.prompt is None and cfg.base_url is None


def test_gemini_number_fields_take_json_integers() -> None:
    cfg = GeminiPromptConfig.model_validate({**GEMINI, "temperature": 1, "timeout_s": 30})
    assert cfg.temperature == 1.0 and isinstance(cfg.temperature, float)
    assert cfg.timeout_s == 30.0


@pytest.mark.parametrize(
    ("config", "field", "reason"),
    [
        ({"model": None}, "model", "valid string"),
        ({"model": "  "}, "model", "must not be blank"),
        ({"prompt": 3}, "prompt", "valid string"),
        ({"temperature": "0.2"}, "temperature", "valid number"),
        ({"temperature": 2.5}, "temperature", "less than or equal to 2"),
        ({"temperature": False}, "temperature", "valid number"),
        ({"inline_max_bytes": -1}, "inline_max_bytes", "greater than or equal to 0"),
        ({"inline_max_bytes": 21 * 1024 * 1024}, "inline_max_bytes", "less than or equal to"),
        ({"timeout_s": -1}, "timeout_s", "greater than 0"),
        ({"base_url": 8080}, "base_url", "valid string"),
        ({"response_schema": "object"}, "response_schema", "valid dictionary"),
    ],
)
def test_gemini_refuses(config: dict[str, Any], field: str, reason: str) -> None:
    problem = only_problem("gemini_prompt", {**GEMINI, **config})
    assert problem.startswith(f"config.{field}: ") and reason in problem


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "objekt"},
        {"type": "object", "required": "language"},
        {"type": "object", "properties": {"a": {"type": "string", "minLength": -1}}},
        {"type": "OBJECT", "properties": {"a": {"type": "TEXT"}}},  # Gemini's dialect, wrong
    ],
)
def test_invalid_response_schema_is_refused(schema: dict[str, Any]) -> None:
    problem = only_problem("gemini_prompt", {**GEMINI, "response_schema": schema})
    assert problem.startswith("config.response_schema: not a valid JSON Schema: ")


def test_response_schema_in_gemini_dialect_is_valid() -> None:
    schema = {"type": "OBJECT", "nullable": True, "propertyOrdering": ["mood"],
              "properties": {"mood": {"type": "STRING", "enum": ["calm", "tense"]},
                             "tags": {"type": "ARRAY", "items": {"type": "STRING"}}}}
    validate_config("gemini_prompt", {**GEMINI, "response_schema": schema})


def test_response_schema_nested_too_deeply() -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(5000):
        schema = {"type": "array", "items": schema}
    problem = only_problem("gemini_prompt", {**GEMINI, "response_schema": schema})
    assert problem.startswith("config.response_schema: ")


@pytest.mark.parametrize("value", ["literal", None, ""])
def test_inline_api_key_is_refused_with_the_advice(value: Any) -> None:
    problem = only_problem("gemini_prompt", {**GEMINI, "api_key": value})
    assert problem.startswith("config.api_key: ")
    assert "environment variable" in problem and "config.api_key_env_var" in problem


@pytest.mark.parametrize("value", SECRET_LOOKING)
def test_secret_looking_api_key_env_var_is_refused(value: str) -> None:
    problem = only_problem("gemini_prompt", {**GEMINI, "api_key_env_var": value})
    assert problem.startswith("config.api_key_env_var: ")
    assert "put the secret in an environment variable and name it here" in problem
    assert not value or value not in problem  # a secret is never echoed back


# --------------------------------------------------------------------------- webhook_call


def test_webhook_defaults_are_todays() -> None:
    cfg = WebhookCallConfig.model_validate({"secret_env_var": "SUPAFLOW_SECRET_S"})
    assert cfg.url is None and cfg.headers is None and cfg.allow_hosts is None
    assert cfg.timeout_s == 30.0


@pytest.mark.parametrize(
    ("config", "field", "reason"),
    [
        ({"secret_env_var": None}, "secret_env_var", "valid string"),
        ({"url": "hooks.example.com/in"}, "url", "http or https URL"),
        ({"url": "ftp://hooks.example.com/in"}, "url", "http or https URL"),
        ({"url": ""}, "url", "http or https URL"),
        ({"headers": ["X-A: 1"]}, "headers", "valid dictionary"),
        ({"headers": {"X-A": 1}}, "headers.X-A", "valid string"),
        ({"headers": {"X-A": "a\r\nX-B: b"}}, "headers.X-A", "without CR, LF or NUL"),
        ({"headers": {"X A": "a"}}, "headers.X A.[key]", "header name"),
        ({"headers": {f"X-{i}": "v" for i in range(51)}}, "headers", "at most 50 items"),
        ({"timeout_s": None}, "timeout_s", "valid number"),
        ({"allow_hosts": [3]}, "allow_hosts.0", "valid string"),
    ],
)
def test_webhook_refuses(config: dict[str, Any], field: str, reason: str) -> None:
    problem = only_problem("webhook_call", {**WEBHOOK, **config})
    assert problem.startswith(f"config.{field}: ") and reason in problem


def test_webhook_needs_a_secret_env_var() -> None:
    assert only_problem("webhook_call", {"url": WEBHOOK["url"]}) == "config.secret_env_var: is required"


def test_inline_webhook_secret_is_refused_with_the_advice() -> None:
    problem = only_problem("webhook_call", {**WEBHOOK, "secret": "whsec_live_1234"})
    assert problem.startswith("config.secret: ")
    assert "environment variable" in problem and "config.secret_env_var" in problem
    assert "whsec_live_1234" not in problem


@pytest.mark.parametrize("value", SECRET_LOOKING)
def test_secret_looking_secret_env_var_is_refused(value: str) -> None:
    problem = only_problem("webhook_call", {**WEBHOOK, "secret_env_var": value})
    assert problem.startswith("config.secret_env_var: ")
    assert "put the secret in an environment variable and name it here" in problem
    assert not value or value not in problem


# --------------------------------------------------------------------------- transform


def test_transform_fail() -> None:
    cfg = TransformConfig.model_validate({"fail": {"retryable": False, "message": "boom", "attempts": 2}})
    assert cfg.fail is not None and cfg.fail.attempts == 2 and cfg.fail.retryable is False
    defaults = TransformConfig.model_validate({"fail": {}}).fail
    assert defaults is not None
    assert (defaults.message, defaults.retryable, defaults.attempts) == ("failed on purpose", True, None)


@pytest.mark.parametrize(
    ("config", "field"),
    [({"fail": True}, "fail"), ({"fail": {"attempts": -1}}, "fail.attempts"),
     ({"fail": {"retryable": "no"}}, "fail.retryable"), ({"fail": {"why": "x"}}, "fail.why")],
)
def test_transform_refuses(config: dict[str, Any], field: str) -> None:
    assert only_problem("transform", config).startswith(f"config.{field}: ")


# --------------------------------------------------------------------------- the executors


EXECUTORS: dict[str, Callable[[dict[str, Any], Any, StepContext], Any]] = {
    "transform": transform.execute, "http_download": http_download.execute,
    "gemini_prompt": gemini_prompt.execute, "webhook_call": webhook_call.execute,
}


def ctx(attempt: int = 1) -> StepContext:
    return StepContext("job-1", "step-1", attempt, "t-1", 60.0)


@pytest.mark.parametrize(
    ("type_name", "config", "inputs"),
    [
        ("transform", {"fail": {"attempts": -1}}, {}),
        ("http_download", {**DOWNLOAD, "key_template": "{nope}"}, {"url": "https://a.example.com/x"}),
        ("gemini_prompt", {**GEMINI, "api_key": "literal"}, {}),
        ("webhook_call", {**WEBHOOK, "secret_env_var": "whsec-1"}, {"body": {}}),
    ],
)
def test_executor_refuses_with_the_validators_message(
    type_name: str, config: dict[str, Any], inputs: dict[str, Any]
) -> None:
    """The executor parses with the same model: the same message, permanent, before any I/O."""
    execute = EXECUTORS[type_name]
    with pytest.raises(StepError) as info:
        execute(config, inputs, ctx())
    assert info.value.retryable is False
    assert info.value.message == str(ConfigError(problems(type_name, config)))


def test_transform_fails_on_purpose_as_configured() -> None:
    config = {"fail": {"attempts": 1, "retryable": False, "message": "boom"}}
    with pytest.raises(StepError) as info:
        transform.execute(config, {"n": 1}, ctx(1))
    assert (info.value.message, info.value.retryable) == ("boom", False)
    assert transform.execute(config, {"n": 1}, ctx(2)) == {"n": 1}
    with pytest.raises(StepError) as info:
        transform.execute({"fail": {}}, {}, ctx(7))
    assert (info.value.message, info.value.retryable) == ("failed on purpose", True)
    assert transform.execute({}, [1], ctx()) == [1]
