"""gemini-prompt: one generateContent call through google-genai, with files from storage.

Small files go inline (``Part.from_bytes``); larger ones through the Files API, streamed
from storage into a temporary file so they are never held in memory twice. The SDK's own
retries are switched off: the engine's retry policy decides, from ``StepError.retryable``.

This is the only module that imports ``google.genai`` (the dependency is heavy and only
this executor's function ships it).
"""

from __future__ import annotations

import json
import mimetypes
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
from botocore.exceptions import BotoCoreError, ClientError
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from pydantic import ValidationError

from shared import storage
from shared.executors import netguard, parse_config
from shared.executors.base import StepContext, StepError
from shared.log import logger
from shared.protocol import http_error_type
from shared.settings import named_secret, settings
from supaflow_models.transformers import (
    DEFAULT_GEMINI_TIMEOUT_S,
    GeminiPromptConfig,
    is_json_schema,
)

# Below this much time left there is no point starting a call that cannot finish.
MIN_CALL_S = 0.5
# A later call (upload, then generate) still goes out with at least this much left.
MIN_REQUEST_S = 0.1
FILE_POLL_INTERVAL_S = 1.0
GENERIC_CONTENT_TYPES = {"", "application/octet-stream", "binary/octet-stream"}
# Finish reasons after which asking again gives the same answer.
FINAL_FINISH_REASONS = {
    "SAFETY", "RECITATION", "LANGUAGE", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
    "IMAGE_SAFETY", "MALFORMED_FUNCTION_CALL",
}

_clients: dict[tuple[str, str | None], genai.Client] = {}
_clients_lock = threading.Lock()


def execute(config: dict[str, Any], inputs: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Run the prompt; returns ``{"text", "json"?, "model", "usage"}``.

    Raises StepError: retryable for 429, 408, 5xx, timeouts and connection errors;
    permanent for other 4xx, bad configuration, missing files and unparseable JSON.
    """
    cfg = parse_config(GeminiPromptConfig, config)
    model = cfg.model.strip()
    prompt = _prompt(cfg, inputs)
    schema = cfg.response_schema
    deadline = time.monotonic() + _timeout_s(cfg, ctx)
    client = _client(_api_key(cfg), _base_url(cfg))
    files = _file_refs(inputs)

    uploaded: list[str] = []
    try:
        parts = _file_parts(client, files, cfg.inline_max_bytes, deadline, uploaded, ctx)
        gen_config = types.GenerateContentConfig(
            temperature=cfg.temperature,
            http_options=_http_options(deadline),
            **_schema_config(schema),
        )
        # Gemini's guidance: media first, then the instruction about it.
        contents: list[Any] = [*parts, prompt]
        try:
            response = client.models.generate_content(
                model=model, contents=contents, config=gen_config
            )
        except Exception as exc:
            raise _step_error(exc, "generateContent") from exc
    finally:
        _delete_uploads(client, uploaded, deadline, ctx)

    text = _response_text(response)
    output: dict[str, Any] = {
        "text": text,
        "model": response.model_version or model,
        "usage": _usage(response),
    }
    if schema is not None:
        output["json"] = _parse_json(text, schema)
    return output


# --------------------------------------------------------------------------- configuration


def _prompt(cfg: GeminiPromptConfig, inputs: dict[str, Any]) -> str:
    """The orchestrator resolves the template into ``inputs["prompt"]``; else the literal."""
    prompt = inputs["prompt"] if "prompt" in inputs else cfg.prompt
    if not isinstance(prompt, str) or not prompt.strip():
        raise StepError("prompt is required: a non-empty string in inputs.prompt or "
                        "config.prompt", retryable=False, error_type="input")
    return prompt


def _timeout_s(cfg: GeminiPromptConfig, ctx: StepContext) -> float:
    """The configured timeout (default 120 s), never beyond what the attempt has left."""
    timeout = min(cfg.timeout_s or DEFAULT_GEMINI_TIMEOUT_S, ctx.remaining_s())
    if timeout < MIN_CALL_S:
        raise StepError("no time left in this attempt to call Gemini", retryable=True, error_type="timeout")
    return timeout


def _api_key(cfg: GeminiPromptConfig) -> str:
    """The key comes from the environment only (the model refuses one in the config)."""
    env_var = cfg.api_key_env_var
    key = named_secret(env_var).strip()
    if not key:
        raise StepError(f"the Gemini API key is missing: environment variable {env_var} "
                        "is not set (config.api_key_env_var names it)", retryable=False, error_type="config")
    return key


GEMINI_HOST = "generativelanguage.googleapis.com"


def _base_url(cfg: GeminiPromptConfig) -> str | None:
    """Where the API key is sent: Google, the deployment's GEMINI_BASE_URL, or a
    config.base_url whose host SUPAFLOW_ALLOWED_HOSTS lists (an admin may not have the
    key sent to a host of their choosing)."""
    if not cfg.base_url:
        return settings().gemini_base_url or None
    parts = urlsplit(cfg.base_url)
    host = (parts.hostname or "").lower()
    if host != GEMINI_HOST and not netguard.is_allowlisted(
            host, parts.port or (443 if parts.scheme == "https" else 80), netguard.allowed_hosts()):
        raise StepError(f"config.base_url: host {host!r} is neither {GEMINI_HOST} nor listed in"
                        " SUPAFLOW_ALLOWED_HOSTS", retryable=False, error_type="config")
    return cfg.base_url


def _client(api_key: str, base_url: str | None) -> genai.Client:
    """One client (and connection pool) per key and endpoint, reused across warm invocations."""
    with _clients_lock:
        client = _clients.get((api_key, base_url))
        if client is None:
            client = genai.Client(
                api_key=api_key,
                http_options=types.HttpOptions(
                    base_url=base_url,
                    # One attempt: the engine's retry policy is the one that applies.
                    retry_options=types.HttpRetryOptions(attempts=1),
                ),
            )
            _clients[(api_key, base_url)] = client
        return client


def _http_options(deadline: float) -> types.HttpOptions:
    """Per-request options: the time left (the SDK wants milliseconds) and no SDK retries."""
    left = deadline - time.monotonic()
    if left < MIN_REQUEST_S:
        raise StepError("out of time before calling Gemini", retryable=True, error_type="timeout")
    return types.HttpOptions(
        timeout=int(left * 1000), retry_options=types.HttpRetryOptions(attempts=1)
    )


def _schema_config(schema: dict[str, Any] | None) -> dict[str, Any]:
    """Structured output: a valid JSON Schema goes as ``response_json_schema``; anything else
    (e.g. Gemini's own ``{"type": "OBJECT"}`` dialect) as ``response_schema``."""
    if schema is None:
        return {}
    if not is_json_schema(schema):
        return {"response_mime_type": "application/json", "response_schema": schema}
    return {"response_mime_type": "application/json", "response_json_schema": schema}


# --------------------------------------------------------------------------- files


@dataclass(frozen=True)
class FileRef:
    bucket: str
    key: str
    content_type: str | None


def _file_refs(inputs: dict[str, Any]) -> list[FileRef]:
    """``inputs["files"]`` (a list) and ``inputs["file"]`` (one), as http-download outputs them."""
    raw: list[Any] = []
    files = inputs.get("files")
    if files is not None:
        if not isinstance(files, list):
            raise StepError("inputs.files must be a list of {bucket, key} objects",
                            retryable=False, error_type="input")
        raw.extend(files)
    if inputs.get("file") is not None:
        raw.append(inputs["file"])
    refs: list[FileRef] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise StepError(f"file input {i} must be an object with bucket and key",
                            retryable=False, error_type="input")
        bucket, key, ctype = item.get("bucket"), item.get("key"), item.get("content_type")
        if not isinstance(bucket, str) or not bucket or not isinstance(key, str) or not key:
            raise StepError(f"file input {i} needs string bucket and key", retryable=False,
                            error_type="input")
        refs.append(FileRef(bucket, key, ctype if isinstance(ctype, str) else None))
    return refs


def _mime_type(ref: FileRef, stored_type: str | None) -> str:
    """The declared type, else the stored one, else a guess from the key; no parameters."""
    for candidate in (ref.content_type, stored_type):
        bare = (candidate or "").split(";", 1)[0].strip().lower()
        if bare not in GENERIC_CONTENT_TYPES:
            return bare
    guessed, _ = mimetypes.guess_type(ref.key)
    return guessed or "application/octet-stream"


def _file_parts(
    client: genai.Client,
    refs: list[FileRef],
    inline_max: int,
    deadline: float,
    uploaded: list[str],
    ctx: StepContext,
) -> list[types.Part]:
    """Inline while the running total stays within ``inline_max``; the Files API beyond it."""
    parts: list[types.Part] = []
    inline_total = 0
    for ref in refs:
        size, stored_type = _head(ref)
        mime = _mime_type(ref, stored_type)
        if inline_total + size <= inline_max:
            data = _read(ref)
            inline_total += len(data)
            parts.append(types.Part.from_bytes(data=data, mime_type=mime))
        else:
            file = _upload(client, ref, mime, deadline, uploaded, ctx)
            parts.append(types.Part.from_uri(file_uri=cast(str, file.uri),
                                             mime_type=file.mime_type or mime))
    return parts


def _read(ref: FileRef) -> bytes:
    return _storage_call(lambda: storage.read_bytes(ref.bucket, ref.key)[0], ref)


def _head(ref: FileRef) -> tuple[int, str | None]:
    head = _storage_call(lambda: storage.client().head_object(Bucket=ref.bucket, Key=ref.key),
                         ref)
    return int(head["ContentLength"]), head.get("ContentType")


def _storage_call[T](fn: Callable[[], T], ref: FileRef) -> T:
    """Storage errors: a missing object or denied access is permanent, the rest retryable."""
    try:
        return fn()
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        permanent = code in {"NoSuchKey", "NoSuchBucket", "404", "403", "AccessDenied"} or (
            400 <= status < 500 and status not in (408, 429)
        )
        raise StepError(f"storage error reading s3://{ref.bucket}/{ref.key}: {code or exc}",
                        retryable=not permanent, error_type=http_error_type(status or 400)) from exc
    except BotoCoreError as exc:
        raise StepError(f"storage unreachable reading s3://{ref.bucket}/{ref.key}: {exc}",
                        retryable=True, error_type="network") from exc


def _upload(
    client: genai.Client,
    ref: FileRef,
    mime: str,
    deadline: float,
    uploaded: list[str],
    ctx: StepContext,
) -> types.File:
    """Stream the object to a temporary file, upload it, and wait until Gemini can use it."""
    with tempfile.TemporaryDirectory(prefix="gemini-upload-") as tmp_dir:
        path = str(Path(tmp_dir) / "object")
        _storage_call(lambda: storage.client().download_file(ref.bucket, ref.key, path), ref)
        try:
            file = client.files.upload(
                file=path,
                config=types.UploadFileConfig(
                    mime_type=mime,
                    display_name=ref.key.rsplit("/", 1)[-1][:512],
                    http_options=_http_options(deadline),
                ),
            )
        except StepError:
            raise
        except Exception as exc:
            raise _step_error(exc, "Files API upload") from exc
    if file.name:
        uploaded.append(file.name)
    logger.info("uploaded to the Files API",
                extra={**ctx.log_keys(), "file": file.name, "size": file.size_bytes})
    while file.state == types.FileState.PROCESSING:
        if deadline - time.monotonic() < MIN_CALL_S + FILE_POLL_INTERVAL_S:
            raise StepError(f"Gemini is still processing {file.name}; out of time",
                            retryable=True, error_type="timeout")
        time.sleep(FILE_POLL_INTERVAL_S)
        try:
            file = client.files.get(
                name=cast(str, file.name),
                config=types.GetFileConfig(http_options=_http_options(deadline)),
            )
        except StepError:
            raise
        except Exception as exc:
            raise _step_error(exc, "Files API get") from exc
    if file.state == types.FileState.FAILED:
        raise StepError(f"Gemini could not process {ref.key}: {file.error}", retryable=False,
                        error_type="provider")
    if not file.uri:
        raise StepError("the Files API returned a file without a uri", retryable=True, error_type="provider")
    return file


def _delete_uploads(
    client: genai.Client, names: list[str], deadline: float, ctx: StepContext
) -> None:
    """Best effort: Gemini expires files after 48 h anyway, but storage quota is per project."""
    for name in names:
        timeout_ms = int(min(10.0, max(1.0, deadline - time.monotonic())) * 1000)
        try:
            client.files.delete(
                name=name,
                config=types.DeleteFileConfig(http_options=types.HttpOptions(
                    timeout=timeout_ms, retry_options=types.HttpRetryOptions(attempts=1),
                )),
            )
        except (genai_errors.APIError, httpx.HTTPError, ValueError) as exc:
            logger.warning("could not delete uploaded file",
                           extra={**ctx.log_keys(), "file": name, "error": str(exc)})


# --------------------------------------------------------------------------- errors & output


def _step_error(exc: Exception, what: str) -> StepError:
    """Map SDK and transport failures to the engine's retry decision; re-raise anything else
    (a bug here should surface as itself, not as a Gemini failure)."""
    if isinstance(exc, StepError):
        return exc
    if isinstance(exc, genai_errors.APIError):
        code = int(exc.code or 0)
        retryable = code in (408, 429) or code >= 500 or code == 0
        detail = exc.message or str(exc.details)[:500]
        return StepError(f"Gemini {what} failed: {code} {exc.status or ''}: {detail}".strip(),
                         retryable=retryable,
                         error_type="network" if code == 0 else http_error_type(code))
    if isinstance(exc, httpx.TimeoutException):
        return StepError(f"Gemini {what} timed out: {type(exc).__name__}", retryable=True,
                         error_type="timeout")
    if isinstance(exc, httpx.TransportError):
        return StepError(f"Gemini {what}: connection failed: {exc!r}", retryable=True,
                         error_type="network")
    if isinstance(exc, ValidationError):
        return StepError(f"Gemini {what}: invalid request: {exc}", retryable=False, error_type="input")
    if isinstance(exc, (ValueError, KeyError)):
        # The SDK raises these when an upload session ends unexpectedly.
        return StepError(f"Gemini {what} failed: {exc}", retryable=True)
    raise exc


def _response_text(response: types.GenerateContentResponse) -> str:
    """The answer's text; a blocked prompt or a refusal is permanent, an empty answer is not."""
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason is not None:
        raise StepError(f"Gemini blocked the prompt: {feedback.block_reason.value} "
                        f"{feedback.block_reason_message or ''}".strip(), retryable=False,
                        error_type="provider")
    text = response.text
    if text:
        return text
    reason = None
    if response.candidates and response.candidates[0].finish_reason is not None:
        reason = response.candidates[0].finish_reason.value
    if reason in FINAL_FINISH_REASONS:
        raise StepError(f"Gemini returned no text (finish reason {reason})", retryable=False,
                        error_type="provider")
    raise StepError(f"Gemini returned no text (finish reason {reason})", retryable=True,
                    error_type="provider")


def _usage(response: types.GenerateContentResponse) -> dict[str, int]:
    """Output tokens include thinking tokens: both are billed as output."""
    meta = response.usage_metadata
    if meta is None:
        return {"prompt_tokens": 0, "output_tokens": 0}
    return {
        "prompt_tokens": meta.prompt_token_count or 0,
        "output_tokens": (meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0),
    }


def _parse_json(text: str, schema: dict[str, Any]) -> Any:
    """The structured answer, checked against the schema when it is a JSON Schema."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StepError(f"Gemini's answer is not valid JSON ({exc.msg} at {exc.pos}): "
                        f"{text[:200]!r}", retryable=False, error_type="provider") from exc
    if not is_json_schema(schema):
        return value  # Gemini-dialect schema: Gemini enforced it, jsonschema cannot check it.
    error = best_match(Draft202012Validator(schema).iter_errors(value))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise StepError(f"Gemini's JSON does not match response_schema at {where}: "
                        f"{error.message}", retryable=False, error_type="provider")
    return value
