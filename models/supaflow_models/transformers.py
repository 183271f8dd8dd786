"""What each transformer type's `config` may hold: one pydantic model per type, the one owner
of those rules. Each executor parses its config with its model (`parse_config`), and the
registry below (`validate_config`) checks a config with the same model before it is stored,
and the `supaflow` command before a file is deployed.

The models live here, not in the executor modules, so that checking a config stays cheap:
this module needs pydantic and jsonschema only, never boto3 or google-genai, which the
executors import and only their own functions ship.

Every model refuses unknown fields and is strict (a JSON string is not a number, a number is
not a bool); float fields take JSON integers too. Secrets are never in a config: a config
names the environment variable that holds one (`api_key_env_var`, `secret_env_var`).
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass
from typing import Annotated, Any

from jsonschema import Draft202012Validator
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from pydantic.json_schema import SkipJsonSchema

# Timeouts: above 0 and at most 900 s, the longest a step may run (a step's `timeout_s`
# bound, supaflow_models.definitions.Step) and the longest a Lambda function lives. A step's own
# time left caps them again at run time.
MAX_TIMEOUT_S = 900.0
ENV_VAR_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}$")
# The environment variables a transformer may name: the two the deployment documents,
# and any the operator sets for transformers under SUPAFLOW_SECRET_. Never the
# deployment's own credentials (SUPABASE_SERVICE_ROLE_KEY, SUPABASE_JWT_SECRET,
# SUPAFLOW_INTERNAL_TOKEN, AWS_*...), which every function has in its environment: an
# admin naming one would have it sent to a host of their choosing.
SECRET_ENV_VARS = frozenset({"GEMINI_API_KEY", "SUPAFLOW_WEBHOOK_SECRET"})
SECRET_ENV_PREFIX = "SUPAFLOW_SECRET_"  # noqa: S105 - a name prefix, not a secret
ENV_ADVICE = "put the secret in an environment variable and name it {where}"
MAX_ALLOW_HOSTS = 100

# http_download's key_template: `{name}` placeholders, each one of KEY_PLACEHOLDERS (the
# values the executor renders it with: shared.executors.http_download.render_key).
KEY_PLACEHOLDERS = frozenset({"job_id", "step_id", "attempt", "filename"})
KEY_PLACEHOLDER = re.compile(r"\{(\w*)\}")
DEFAULT_KEY_TEMPLATE = "{job_id}/{step_id}/{filename}"
DEFAULT_MAX_BYTES = 100 * 1024 * 1024
# The download is spooled to /tmp, and 10 GiB is the most ephemeral storage a Lambda gets.
MAX_MAX_BYTES = 10 * 1024 * 1024 * 1024
DEFAULT_DOWNLOAD_TIMEOUT_S = 60.0

DEFAULT_API_KEY_ENV_VAR = "GEMINI_API_KEY"
# Base64 grows inline bytes by a third; 14 MiB stays under Gemini's 20 MB request limit,
# the upper bound (beyond it no inline request can succeed).
DEFAULT_INLINE_MAX_BYTES = 14 * 1024 * 1024
MAX_INLINE_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_GEMINI_TIMEOUT_S = 120.0

DEFAULT_WEBHOOK_TIMEOUT_S = 30.0

_MEDIA_NAME = r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}"
_CONTENT_TYPE_PATTERN = re.compile(rf"^(\*|\*/\*|{_MEDIA_NAME}/(\*|{_MEDIA_NAME}))$")
_HOST_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
                        r"(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*$")
_BRACKETED_V6 = re.compile(r"^\[([0-9a-f:.]+)\](?::(\d{1,5}))?$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$")
_HEADER_VALUE = re.compile(r"^[^\r\n\x00]{0,8192}$")


# --------------------------------------------------------------------------- field rules


def _env_var_name(value: str) -> str:
    """The name of an environment variable, never a secret itself (the value is not echoed:
    it may be the secret)."""
    if not ENV_VAR_NAME.match(value):
        raise ValueError(
            "must be the name of an environment variable (A-Z, 0-9 and _, not starting with a "
            "digit, at most 128 characters), not a secret: " + ENV_ADVICE.format(where="here")
        )
    if value not in SECRET_ENV_VARS and not value.startswith(SECRET_ENV_PREFIX):
        raise ValueError(
            f"may name only {', '.join(sorted(SECRET_ENV_VARS))} or a variable whose name starts"
            f" with {SECRET_ENV_PREFIX} (the deployment's own credentials are never a"
            " transformer's)"
        )
    return value


def _host_entry(value: str) -> str:
    """As netguard matches them: a host name or IP address, optionally with `:port`;
    an IPv6 address bracketed when it has a port (`[::1]:8080`)."""
    entry = value.strip().lower().rstrip(".")
    host, port = entry, None
    if bracketed := _BRACKETED_V6.match(entry):
        host, port = bracketed.group(1), bracketed.group(2)
        ok = _is_ipv6(host)
    elif entry.count(":") > 1:
        ok = _is_ipv6(entry)
    else:
        host, colon, port = entry.partition(":")
        ok = bool(_HOST_NAME.match(host)) and (not colon or port.isdigit())
    if not ok or (port and not 0 < int(port) < 65536):
        raise ValueError("must be a host name or IP address, optionally with :port "
                         "(e.g. files.example.com, 10.0.0.5:8080, [::1]:8080), not a URL")
    return value


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _content_type_pattern(value: str) -> str:
    if not _CONTENT_TYPE_PATTERN.match(value.strip().lower()):
        raise ValueError("must be a media type pattern: type/subtype, type/*, */* or *")
    return value


def _header_name(value: str) -> str:
    if not _HEADER_NAME.match(value):
        raise ValueError("a header name is 1 to 256 token characters (letters, digits, !#$%&'*+-.^_`|~)")
    return value


def _header_value(value: str) -> str:
    if not _HEADER_VALUE.match(value):
        raise ValueError("a header value is at most 8192 characters, without CR, LF or NUL")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _no_slash(value: str) -> str:
    if "/" in value:
        raise ValueError("must not contain / (a folder belongs in key_template)")
    return value


def _http_url(value: str) -> str:
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http or https URL")
    return value


EnvVarName = Annotated[str, AfterValidator(_env_var_name)]
HostEntry = Annotated[str, AfterValidator(_host_entry)]
AllowHosts = Annotated[list[HostEntry] | None, Field(max_length=MAX_ALLOW_HOSTS)]
Timeout = Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S)]


def _refused_inline(env_field: str) -> BeforeValidator:
    """Refuses any value (null too) of a field that would hold a secret inline, with the advice."""

    def refuse(_value: Any) -> None:
        raise ValueError("a secret is never put in a config: "
                         + ENV_ADVICE.format(where=f"in config.{env_field}"))

    return BeforeValidator(refuse)


# A field that exists only to be refused: no part of the model's JSON schema, dump or repr.
Refused = Annotated[SkipJsonSchema[None], Field(exclude=True, repr=False)]


# What Draft202012Validator.check_schema checks a schema with, built once.
_METASCHEMA = Draft202012Validator(Draft202012Validator.META_SCHEMA,
                                   format_checker=Draft202012Validator.FORMAT_CHECKER)


def is_json_schema(schema: dict[str, Any]) -> bool:
    """A valid JSON Schema (Draft 2020-12), as opposed to Gemini's own dialect."""
    return bool(_METASCHEMA.is_valid(schema))


def _lower_types(schema: Any) -> Any:
    """Gemini's OpenAPI-subset dialect spelled as JSON Schema: its type names (`OBJECT`,
    `STRING`, ...) lowercased wherever a subschema stands."""
    if isinstance(schema, list):
        return [_lower_types(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    kind = out.get("type")
    if isinstance(kind, str):
        out["type"] = kind.lower()
    elif isinstance(kind, list):
        out["type"] = [k.lower() if isinstance(k, str) else k for k in kind]
    for key in ("items", "anyOf", "any_of", "oneOf", "allOf", "prefixItems", "not",
                "additionalProperties", "additional_properties"):
        if key in out:
            out[key] = _lower_types(out[key])
    for key in ("properties", "$defs", "patternProperties"):
        if isinstance(out.get(key), dict):
            out[key] = {name: _lower_types(s) for name, s in out[key].items()}
    return out


def _response_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema, or Gemini's dialect of one (checked as JSON Schema once its type names
    are lowercased: its other keywords, e.g. `nullable`, are ones JSON Schema ignores)."""
    try:
        error = next(_METASCHEMA.iter_errors(schema), None)
        if error is None:
            return schema
        dialect = next(_METASCHEMA.iter_errors(_lower_types(schema)), None)
    except RecursionError:
        raise ValueError("not a valid JSON Schema: nested too deeply") from None
    if dialect is None:
        return schema
    # Where both fail at one place, the first error quotes the value as it was written.
    error = error if error.json_path == dialect.json_path else dialect
    raise ValueError(f"not a valid JSON Schema: {error.message} (at {error.json_path})")


# --------------------------------------------------------------------------- the models


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class HttpDownloadConfig(_Config):
    """http_download: where the file goes, and what download is acceptable."""

    # 1 to 100 characters, no `/` (a folder belongs in key_template).
    bucket: Annotated[str, Field(min_length=1, max_length=100), AfterValidator(_no_slash)]
    # The object key; `{job_id}`, `{step_id}`, `{attempt}`, `{filename}` (from the URL).
    key_template: str = Field(default=DEFAULT_KEY_TEMPLATE, min_length=1, max_length=1024)
    max_bytes: int = Field(default=DEFAULT_MAX_BYTES, ge=1, le=MAX_MAX_BYTES)
    # Empty or absent: any content type.
    allowed_content_types: list[Annotated[str, AfterValidator(_content_type_pattern)]] | None = (
        Field(default=None, max_length=100))
    timeout_s: Timeout = DEFAULT_DOWNLOAD_TIMEOUT_S
    allow_hosts: AllowHosts = None

    @field_validator("key_template")
    @classmethod
    def _known_placeholders(cls, template: str) -> str:
        unknown = sorted({m.group(1) for m in KEY_PLACEHOLDER.finditer(template)} - KEY_PLACEHOLDERS)
        if unknown:
            listed = ", ".join(f"{{{name}}}" for name in unknown)
            allowed = ", ".join(f"{{{name}}}" for name in sorted(KEY_PLACEHOLDERS))
            raise ValueError(f"placeholder {listed} is not one of {allowed}")
        if not template.strip("/"):
            raise ValueError("renders to an empty key")
        return template


class GeminiPromptConfig(_Config):
    """gemini_prompt: the model, the prompt, the answer's shape; the key stays in the env."""

    model: Annotated[str, Field(max_length=256), AfterValidator(_not_blank)]
    # The template, at most a million characters; a step's `inputs.prompt` wins.
    prompt: Annotated[str, Field(max_length=1_000_000)] | None = None
    # Structured output: a JSON Schema, or Gemini's dialect (`{"type": "OBJECT", ...}`).
    response_schema: Annotated[dict[str, Any], AfterValidator(_response_schema)] | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)  # Gemini's range
    inline_max_bytes: int = Field(default=DEFAULT_INLINE_MAX_BYTES, ge=0, le=MAX_INLINE_MAX_BYTES)
    timeout_s: Timeout | None = None  # None: DEFAULT_GEMINI_TIMEOUT_S
    api_key_env_var: EnvVarName = DEFAULT_API_KEY_ENV_VAR
    # Else GEMINI_BASE_URL, else Google's endpoint.
    base_url: str | None = None
    # Only there to be refused with the reason (any value, null included).
    api_key: Annotated[Refused, _refused_inline("api_key_env_var")] = None


class WebhookCallConfig(_Config):
    """webhook_call: where to POST and with which secret (named, never inline)."""

    # An absolute http(s) URL, at most 2048 characters; a step's `inputs.url` wins.
    url: Annotated[str, Field(max_length=2048), AfterValidator(_http_url)] | None = None
    secret_env_var: EnvVarName
    # Up to 50 extra headers; the signature, idempotency and X-Supaflow-* headers win.
    headers: Annotated[
        dict[Annotated[str, AfterValidator(_header_name)], Annotated[str, AfterValidator(_header_value)]]
        | None,
        Field(max_length=50),
    ] = None
    timeout_s: Timeout = DEFAULT_WEBHOOK_TIMEOUT_S
    allow_hosts: AllowHosts = None
    secret: Annotated[Refused, _refused_inline("secret_env_var")] = None


class FailOnPurpose(_Config):
    """Fail the first `attempts` attempts (every attempt when absent), to try retry policies."""

    message: Annotated[str, Field(max_length=10_000)] = "failed on purpose"
    retryable: bool = True
    attempts: int | None = Field(default=None, ge=0)


class TransformConfig(_Config):
    """transform: no I/O; `fail` makes it fail on purpose."""

    fail: FailOnPurpose | None = None


# --------------------------------------------------------------------------- problems


def config_problems(model: type[BaseModel], exc: ValidationError) -> list[str]:
    """One `config.<field>: <reason>` line per problem. Values are never echoed: a config
    that breaks the rules may hold a secret where a name should be."""
    problems = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        where = ".".join(["config", *(str(part) for part in loc)])
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, ValueError):
            reason = str(cause)
        elif error["type"] == "missing":
            reason = "is required"
        elif error["type"] == "extra_forbidden":
            reason = "is not a known field"
            if len(loc) == 1:
                known = (name for name, f in model.model_fields.items() if not f.exclude)
                reason += f" (known: {', '.join(known)})"
        elif not loc and error["type"] in ("model_type", "model_attributes_type", "dict_type"):
            reason = "must be a JSON object"
        else:
            reason = error["msg"]
        problems.append(f"{where}: {reason}")
    return problems


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
