"""A local stand-in for the Gemini Developer API, speaking the REST wire format of google-genai.

Tests and the demo point the real SDK at it with ``HttpOptions(base_url=...)`` so nothing
reaches Google. It answers what the gemini-prompt executor uses:

- ``POST /v1beta/models/{model}:generateContent`` (also ``/v1/``): JSON that conforms to the
  requested ``responseJsonSchema`` / ``responseSchema`` when ``responseMimeType`` is
  ``application/json``, otherwise a plain-text account of the parts it received.
- The Files API resumable upload (``POST /upload/v1beta/files`` with
  ``X-Goog-Upload-Protocol: resumable`` and the ``start`` / ``upload`` / ``upload, finalize``
  commands), ``GET``/``DELETE /v1beta/files/{id}`` and ``GET /v1beta/files``.
- A control API for tests: ``POST /_control/faults``, ``GET /_control/requests``,
  ``GET /_control/files``, ``POST /_control/config``, ``POST /_control/reset``.

Every Gemini route requires an API key (``x-goog-api-key`` header or ``?key=``), except the
upload URL it hands out, which authorises itself through its ``upload_id`` as Google's does.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hashlib
import json
import re
import socket
import sys
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

API_VERSIONS = ("v1beta", "v1")
FAKE_MODEL_SUFFIX = "-fake"
# The demo stack runs for hours; keep the request log bounded.
MAX_LOGGED_REQUESTS = 1000

# Gemini's canonical status names for the HTTP codes it answers with.
STATUS_NAMES: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
FAULT_MESSAGES: dict[int, str] = {
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
    400: "Request contains an invalid argument.",
}


def gemini_error(code: int, message: str, status: str | None = None) -> JSONResponse:
    """An error body shaped like Google's: ``{"error": {"code", "message", "status"}}``."""
    name = status or STATUS_NAMES.get(code, "UNKNOWN")
    return JSONResponse({"error": {"code": code, "message": message, "status": name}}, code)


@dataclass
class Fault:
    """Answer the next ``count`` calls to ``target`` with an error, a delay or a raw text."""

    status: int | None
    count: int
    target: str = "generate"
    message: str | None = None
    delay_s: float = 0.0
    text: str | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "status": self.status, "count": self.count, "target": self.target,
            "message": self.message, "delay_s": self.delay_s, "text": self.text,
        }


@dataclass
class StoredFile:
    """A file uploaded through the Files API; the fake keeps its size and hash, not its bytes."""

    name: str
    display_name: str | None
    mime_type: str
    size_bytes: int
    sha256: str
    uri: str
    created: datetime
    state: str
    polls_until_active: int

    def resource(self) -> dict[str, Any]:
        iso = self.created.isoformat().replace("+00:00", "Z")
        res: dict[str, Any] = {
            "name": self.name,
            "mimeType": self.mime_type,
            "sizeBytes": str(self.size_bytes),
            "createTime": iso,
            "updateTime": iso,
            "expirationTime": (self.created + timedelta(hours=48)).isoformat().replace(
                "+00:00", "Z"
            ),
            "sha256Hash": base64.b64encode(self.sha256.encode()).decode(),
            "uri": self.uri,
            "state": self.state,
            "source": "UPLOADED",
        }
        if self.display_name:
            res["displayName"] = self.display_name
        return res


@dataclass
class UploadSession:
    """An upload started with the ``start`` command and not yet finalized."""

    name: str
    display_name: str | None
    mime_type: str
    declared_size: int | None
    received: int = 0
    digest: Any = field(default_factory=hashlib.sha256)


class FakeGeminiState:
    """Everything the fake remembers; guarded by a lock because tests read it from threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.faults: list[Fault] = []
        self.requests: list[dict[str, Any]] = []
        self.files: dict[str, StoredFile] = {}
        self.uploads: dict[str, UploadSession] = {}
        self.file_processing_polls = 0

    def reset(self) -> None:
        with self.lock:
            self.faults.clear()
            self.requests.clear()
            self.files.clear()
            self.uploads.clear()
            self.file_processing_polls = 0

    def take_fault(self, target: str) -> Fault | None:
        """Consume one use of the first pending fault for ``target``."""
        with self.lock:
            for fault in self.faults:
                if fault.target == target and fault.count > 0:
                    fault.count -= 1
                    if fault.count == 0:
                        self.faults.remove(fault)
                    return fault
        return None

    def file_by_ref(self, ref: str) -> StoredFile | None:
        """Find a file by its URI or by ``files/<id>`` (the SDK sends the URI)."""
        match = re.search(r"(files/[A-Za-z0-9_-]+)$", ref.split("?", 1)[0])
        if not match:
            return None
        with self.lock:
            return self.files.get(match.group(1))


# --------------------------------------------------------------------------- schema -> value


def _schema_type(schema: dict[str, Any]) -> str | None:
    """The JSON type of a schema: lower-cased (responseSchema sends ``OBJECT``), nulls skipped."""
    raw = schema.get("type")
    if isinstance(raw, list):
        non_null = [str(t).lower() for t in raw if str(t).lower() != "null"]
        return non_null[0] if non_null else "null"
    if isinstance(raw, str):
        return raw.lower()
    if "properties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return None


def _resolve_ref(ref: str, root: dict[str, Any]) -> dict[str, Any]:
    if not ref.startswith("#/"):
        return {}
    node: Any = root
    for token in ref[2:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or token not in node:
            return {}
        node = node[token]
    return node if isinstance(node, dict) else {}


def _timestamp(seconds: int) -> str:
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


def _fake_string(schema: dict[str, Any], name: str, index: int) -> str:
    """A plausible string: a few name hints (timestamps, language) and formats, else a label."""
    fmt = str(schema.get("format", "")).lower()
    lname = name.lower()
    if fmt == "date-time":
        value = "2025-01-01T00:00:00Z"
    elif fmt == "date":
        value = "2025-01-01"
    elif fmt == "time":
        value = f"00:{index * 4 // 60:02d}:{index * 4 % 60:02d}"
    elif fmt in ("uri", "url"):
        value = "https://example.com/"
    elif fmt == "email":
        value = "someone@example.com"
    elif fmt == "uuid":
        value = str(uuid.UUID(int=index + 1))
    elif lname in ("start", "start_time", "starttime", "begin", "from", "timestamp"):
        value = _timestamp(index * 4)
    elif lname in ("end", "end_time", "endtime", "stop", "to"):
        value = _timestamp(index * 4 + 4)
    elif lname in ("language", "lang", "language_code", "languagecode", "locale"):
        value = "en"
    elif lname in ("text", "transcript", "content", "sentence", "utterance"):
        value = f"This is fake transcript segment {index + 1}."
    elif lname in ("speaker", "speaker_id"):
        value = f"Speaker {index % 2 + 1}"
    else:
        value = f"fake {name or 'value'} {index + 1}"
    min_len = int(schema.get("minLength", 0) or 0)
    max_len = schema.get("maxLength")
    if len(value) < min_len:
        value = value + "x" * (min_len - len(value))
    if isinstance(max_len, int):
        value = value[:max_len]
    return value


def _fake_number(schema: dict[str, Any], name: str, index: int, integer: bool) -> int | float:
    lname = name.lower()
    if lname in ("start", "start_s", "start_seconds", "begin"):
        base: float = index * 4.0
    elif lname in ("end", "end_s", "end_seconds", "stop"):
        base = index * 4.0 + 4.0
    elif lname in ("confidence", "score", "probability"):
        base = 0.9
    else:
        base = float(index + 1)
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    if isinstance(low, (int, float)) and not isinstance(low, bool) and base < low:
        base = float(low) + (1 if "exclusiveMinimum" in schema and integer else 0)
    if isinstance(high, (int, float)) and not isinstance(high, bool) and base > high:
        base = float(high) - (1 if "exclusiveMaximum" in schema and integer else 0)
    return int(base) if integer else base


def fake_value(
    schema: Any, root: dict[str, Any] | None = None, name: str = "", index: int = 0, depth: int = 0
) -> Any:
    """A value conforming to a JSON Schema or a Gemini ``Schema``, built from the schema alone.

    Honours ``$ref``/``$defs``, ``anyOf``/``oneOf``/``allOf``, ``const``, ``enum``,
    ``default``/``example(s)``, ``properties``/``required``/``propertyOrdering``, ``items``,
    ``prefixItems``, ``minItems``/``maxItems``, string formats and numeric bounds.
    """
    if not isinstance(schema, dict) or depth > 12:
        return None
    root = schema if root is None else root
    if "$ref" in schema:
        merged = {**_resolve_ref(str(schema["$ref"]), root), **{
            k: v for k, v in schema.items() if k != "$ref"
        }}
        return fake_value(merged, root, name, index, depth + 1)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[index % len(enum)]
    for key in ("default", "example"):
        if key in schema:
            return schema[key]
    examples = schema.get("examples")
    if isinstance(examples, list) and examples:
        return examples[index % len(examples)]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            chosen = next(
                (o for o in options if isinstance(o, dict) and _schema_type(o) != "null"),
                options[0],
            )
            return fake_value(chosen, root, name, index, depth + 1)
    all_of = schema.get("allOf")
    if isinstance(all_of, list) and all_of:
        merged_all: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in all_of:
            if isinstance(part, dict):
                props = {**merged_all.get("properties", {}), **part.get("properties", {})}
                required = [*merged_all.get("required", []), *part.get("required", [])]
                merged_all = {**merged_all, **part, "properties": props, "required": required}
        return fake_value(merged_all, root, name, index, depth + 1)

    kind = _schema_type(schema)
    if kind == "object":
        props = schema.get("properties") or {}
        order = [p for p in schema.get("propertyOrdering", []) if p in props]
        order += [p for p in props if p not in order]
        result: dict[str, Any] = {}
        for prop in order:
            result[prop] = fake_value(props[prop], root, prop, index, depth + 1)
        for prop in schema.get("required", []):
            if prop not in result:
                result[prop] = f"fake {prop}"
        return result
    if kind == "array":
        prefix = schema.get("prefixItems")
        if isinstance(prefix, list) and prefix:
            return [fake_value(p, root, name, i, depth + 1) for i, p in enumerate(prefix)]
        min_items = int(schema.get("minItems", 0) or 0)
        max_items = schema.get("maxItems")
        count = max(min_items, 2)
        if isinstance(max_items, int):
            count = min(count, max_items)
        singular = name[:-1] if name.endswith("s") else name
        return [
            fake_value(schema.get("items", {}), root, singular, i, depth + 1)
            for i in range(count)
        ]
    if kind == "string":
        return _fake_string(schema, name, index)
    if kind == "integer":
        return _fake_number(schema, name, index, integer=True)
    if kind == "number":
        return _fake_number(schema, name, index, integer=False)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return f"fake {name or 'value'}"


# --------------------------------------------------------------------------- the app


def _api_key(request: Request) -> str | None:
    """The key as Google reads it: the ``x-goog-api-key`` header, else the ``key`` query param."""
    header = request.headers.get("x-goog-api-key")
    if header is not None:
        return header
    return request.query_params.get("key")


def _auth_error(request: Request) -> JSONResponse | None:
    """Gemini answers 403 without a key and 400 API_KEY_INVALID with an empty one."""
    key = _api_key(request)
    if key is None:
        return gemini_error(
            403,
            "Method doesn't allow unregistered callers (callers without established identity)."
            " Please use API Key or other form of API consumer identity to call this API.",
        )
    if not key.strip():
        return gemini_error(400, "API key not valid. Please pass a valid API key.")
    return None


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _usage(prompt_tokens: int, output_text: str) -> dict[str, int]:
    output_tokens = max(1, len(output_text) // 4)
    return {
        "promptTokenCount": prompt_tokens,
        "candidatesTokenCount": output_tokens,
        "totalTokenCount": prompt_tokens + output_tokens,
    }


def create_app(state: FakeGeminiState | None = None) -> Starlette:
    """The Starlette app; ``app.state.fake`` is the ``FakeGeminiState`` for in-process tests."""
    fake = state or FakeGeminiState()

    async def generate_content(request: Request, model: str) -> Response:
        api_version = request.path_params["version"]
        if (denied := _auth_error(request)) is not None:
            return denied
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return gemini_error(400, "Invalid JSON payload received.")
        if not isinstance(body, dict):
            return gemini_error(400, "Invalid JSON payload received. Expected an object.")

        parts_log: list[dict[str, Any]] = []
        problem: JSONResponse | None = None
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            problem = gemini_error(
                400, "* GenerateContentRequest.contents: contents is not specified"
            )
            contents = []
        for content in contents:
            for part in (content or {}).get("parts") or []:
                entry, error = _describe_part(fake, part)
                parts_log.append(entry)
                problem = problem or error

        gen_config = body.get("generationConfig") or {}
        entry = {
            "model": model,
            "api_version": api_version,
            "api_key": _api_key(request),
            "num_parts": len(parts_log),
            "parts": parts_log,
            "used_file_uri": any(p["kind"] == "file_data" for p in parts_log),
            "generation_config": gen_config,
            "status": 200,
        }
        fault = fake.take_fault("generate")
        if fault is not None and fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        if fault is not None and fault.status is not None:
            entry["status"] = fault.status
            entry["fault"] = True
            response = gemini_error(
                fault.status,
                fault.message or FAULT_MESSAGES.get(fault.status, "Injected fault."),
            )
        elif problem is not None:
            entry["status"] = problem.status_code
            response = problem
        else:
            response = _answer(model, body, gen_config, parts_log, fault)
        with fake.lock:
            fake.requests.append(entry)
            del fake.requests[:-MAX_LOGGED_REQUESTS]
        return response

    async def models_route(request: Request) -> Response:
        resource = request.path_params["resource"]
        model, _, method = resource.rpartition(":")
        known_version = request.path_params["version"] in API_VERSIONS
        if known_version and method == "generateContent" and model.startswith("models/"):
            return await generate_content(request, model.removeprefix("models/"))
        return gemini_error(404, f"Method not found: {resource}", "NOT_FOUND")

    async def upload_route(request: Request) -> Response:
        upload_id = request.query_params.get("upload_id")
        if upload_id is None:
            return await _start_upload(fake, request)
        return await _upload_chunk(fake, request, upload_id)

    async def get_file(request: Request) -> Response:
        if (denied := _auth_error(request)) is not None:
            return denied
        name = f"files/{request.path_params['file_id']}"
        with fake.lock:
            stored = fake.files.get(name)
            if stored is not None and stored.state == "PROCESSING":
                stored.polls_until_active -= 1
                if stored.polls_until_active <= 0:
                    stored.state = "ACTIVE"
        if stored is None:
            return _missing_file(name)
        return JSONResponse(stored.resource())

    async def delete_file(request: Request) -> Response:
        if (denied := _auth_error(request)) is not None:
            return denied
        name = f"files/{request.path_params['file_id']}"
        with fake.lock:
            removed = fake.files.pop(name, None)
        if removed is None:
            return _missing_file(name)
        return JSONResponse({})

    async def list_files(request: Request) -> Response:
        if (denied := _auth_error(request)) is not None:
            return denied
        with fake.lock:
            files = [f.resource() for f in fake.files.values()]
        return JSONResponse({"files": files} if files else {})

    async def control_faults(request: Request) -> Response:
        if request.method == "GET":
            with fake.lock:
                return JSONResponse({"faults": [f.describe() for f in fake.faults]})
        try:
            spec = json.loads(await request.body() or b"{}")
            fault = Fault(
                status=int(spec["status"]) if spec.get("status") is not None else None,
                count=int(spec.get("count", 1)),
                target=str(spec.get("target", "generate")),
                message=spec.get("message"),
                delay_s=float(spec.get("delay_s", 0.0)),
                text=spec.get("text"),
            )
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return JSONResponse({"error": f"bad fault spec: {exc}"}, 400)
        if fault.target not in ("generate", "upload"):
            return JSONResponse({"error": "target must be 'generate' or 'upload'"}, 400)
        with fake.lock:
            fake.faults.append(fault)
        return JSONResponse({"ok": True, "fault": fault.describe()})

    async def control_requests(request: Request) -> Response:
        with fake.lock:
            return JSONResponse({"requests": list(fake.requests)})

    async def control_files(request: Request) -> Response:
        with fake.lock:
            files = [
                {**f.resource(), "size": f.size_bytes, "sha256": f.sha256}
                for f in fake.files.values()
            ]
        return JSONResponse({"files": files})

    async def control_config(request: Request) -> Response:
        try:
            spec = json.loads(await request.body() or b"{}")
            polls = int(spec.get("file_processing_polls", 0))
        except (ValueError, TypeError, AttributeError) as exc:
            return JSONResponse({"error": f"bad config: {exc}"}, 400)
        with fake.lock:
            fake.file_processing_polls = polls
        return JSONResponse({"ok": True, "file_processing_polls": polls})

    async def control_reset(request: Request) -> Response:
        fake.reset()
        return JSONResponse({"ok": True})

    # Starlette matches in order: the catch-all model route must come last.
    routes = [
        Route("/_control/faults", control_faults, methods=["GET", "POST"]),
        Route("/_control/requests", control_requests, methods=["GET"]),
        Route("/_control/files", control_files, methods=["GET"]),
        Route("/_control/config", control_config, methods=["POST"]),
        Route("/_control/reset", control_reset, methods=["POST"]),
        Route("/upload/{version:str}/files", upload_route, methods=["POST"]),
        Route("/{version:str}/files/{file_id:str}", get_file, methods=["GET"]),
        Route("/{version:str}/files/{file_id:str}", delete_file, methods=["DELETE"]),
        Route("/{version:str}/files", list_files, methods=["GET"]),
        Route("/{version:str}/{resource:path}", models_route, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.fake = fake
    return app


def _missing_file(name: str) -> JSONResponse:
    return gemini_error(
        403,
        f"You do not have permission to access the File {name.removeprefix('files/')} "
        "or it may not exist.",
    )


def _decode_bytes(data: str) -> bytes:
    """Proto-JSON bytes: standard or URL-safe base64 (google-genai sends URL-safe), padded
    or not."""
    cleaned = data.replace("-", "+").replace("_", "/")
    return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)


def _describe_part(
    fake: FakeGeminiState, part: Any
) -> tuple[dict[str, Any], JSONResponse | None]:
    """One log entry per part, plus the error Gemini would answer for a bad part."""
    if not isinstance(part, dict):
        return {"kind": "invalid"}, gemini_error(400, "Invalid part.")
    if "text" in part:
        return {"kind": "text", "size": len(str(part["text"]))}, None
    if "inlineData" in part:
        inline = part["inlineData"] or {}
        mime = inline.get("mimeType")
        try:
            data = _decode_bytes(str(inline.get("data", "")))
        except (binascii.Error, ValueError):
            return {"kind": "inline_data", "mime_type": mime}, gemini_error(
                400, "Invalid value at 'contents[0].parts[0].inline_data.data' (TYPE_BYTES)"
            )
        entry = {
            "kind": "inline_data",
            "mime_type": mime,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        if not mime:
            return entry, gemini_error(400, "Unable to submit request because it has an "
                                       "empty inlineData.mimeType field.")
        return entry, None
    if "fileData" in part:
        file_data = part["fileData"] or {}
        uri = str(file_data.get("fileUri", ""))
        entry = {"kind": "file_data", "mime_type": file_data.get("mimeType"), "file_uri": uri}
        stored = fake.file_by_ref(uri)
        if stored is None:
            return entry, _missing_file(uri.rsplit("/", 1)[-1])
        entry.update(size=stored.size_bytes, sha256=stored.sha256, file_name=stored.name)
        if stored.state != "ACTIVE":
            return entry, gemini_error(
                400,
                f"The File {stored.name.removeprefix('files/')} is not in an ACTIVE state "
                "and usage is not allowed.",
                "FAILED_PRECONDITION",
            )
        return entry, None
    return {"kind": "other", "keys": sorted(part)}, None


def _answer(
    model: str,
    body: dict[str, Any],
    gen_config: dict[str, Any],
    parts_log: list[dict[str, Any]],
    fault: Fault | None,
) -> JSONResponse:
    """A successful generateContent response: schema-shaped JSON or a description of the parts."""
    schema = gen_config.get("responseJsonSchema") or gen_config.get("responseSchema")
    wants_json = gen_config.get("responseMimeType") == "application/json"
    if fault is not None and fault.text is not None:
        text = fault.text
    elif wants_json:
        text = json.dumps(fake_value(schema) if schema else {"text": _describe(parts_log)})
    else:
        text = _describe(parts_log)
    prompt_tokens = sum(
        max(1, p.get("size", 0) // 4) if p["kind"] == "text" else 32 for p in parts_log
    )
    return JSONResponse({
        "candidates": [{
            "content": {"role": "model", "parts": [{"text": text}]},
            "finishReason": "STOP",
            "index": 0,
        }],
        "usageMetadata": _usage(prompt_tokens, text),
        "modelVersion": model.removeprefix("models/") + FAKE_MODEL_SUFFIX,
        "responseId": uuid.uuid4().hex[:20],
    })


def _describe(parts_log: list[dict[str, Any]]) -> str:
    """Plain text that lets tests assert what reached the model."""
    inline = [p for p in parts_log if p["kind"] == "inline_data"]
    files = [p for p in parts_log if p["kind"] == "file_data"]
    texts = [p for p in parts_log if p["kind"] == "text"]
    lines = [
        f"fake-gemini received {len(parts_log)} parts: {len(texts)} text, "
        f"{len(inline)} inline, {len(files)} file."
    ]
    for p in inline:
        lines.append(f"inline part: {p.get('mime_type')} {p.get('size')} bytes")
    for p in files:
        lines.append(f"file part: {p.get('mime_type')} {p.get('size')} bytes ({p['file_uri']})")
    return "\n".join(lines)


async def _start_upload(fake: FakeGeminiState, request: Request) -> Response:
    """The ``start`` command: create a session and hand out its self-authorising URL."""
    if (denied := _auth_error(request)) is not None:
        return denied
    if request.headers.get("x-goog-upload-protocol", "").lower() != "resumable":
        return gemini_error(400, "Only the resumable upload protocol is supported by the fake.")
    if request.headers.get("x-goog-upload-command", "").lower() != "start":
        return gemini_error(400, "The first request of an upload must use the start command.")
    fault = fake.take_fault("upload")
    if fault is not None and fault.status is not None:
        return gemini_error(fault.status, fault.message or "Injected upload fault.")
    try:
        raw = await request.body()
        meta = (json.loads(raw) if raw else {}).get("file") or {}
    except (json.JSONDecodeError, AttributeError):
        return gemini_error(400, "Invalid JSON payload received.")
    mime = request.headers.get("x-goog-upload-header-content-type") or meta.get("mimeType")
    if not mime:
        return gemini_error(400, "Missing the file's mime type.")
    declared = request.headers.get("x-goog-upload-header-content-length") or meta.get("sizeBytes")
    name = str(meta.get("name") or f"files/{uuid.uuid4().hex[:12]}")
    if not name.startswith("files/"):
        name = f"files/{name}"
    upload_id = uuid.uuid4().hex
    with fake.lock:
        fake.uploads[upload_id] = UploadSession(
            name=name,
            display_name=meta.get("displayName"),
            mime_type=str(mime),
            declared_size=int(declared) if declared is not None else None,
        )
    version = request.path_params["version"]
    url = (
        f"{_base_url(request)}/upload/{version}/files"
        f"?upload_id={upload_id}&upload_protocol=resumable"
    )
    return Response(
        b"",
        200,
        headers={
            "x-goog-upload-url": url,
            "x-goog-upload-status": "active",
            "x-goog-upload-chunk-granularity": "8388608",
            "x-goog-upload-control-url": url,
        },
    )


async def _upload_chunk(fake: FakeGeminiState, request: Request, upload_id: str) -> Response:
    """``upload`` / ``upload, finalize`` / ``query`` commands sent to the upload URL."""
    with fake.lock:
        session = fake.uploads.get(upload_id)
    if session is None:
        return gemini_error(404, "Upload session not found.", "NOT_FOUND")
    commands = {
        c.strip().lower() for c in request.headers.get("x-goog-upload-command", "").split(",")
    }
    if commands == {"query"}:
        return Response(b"", 200, headers={
            "x-goog-upload-status": "active",
            "x-goog-upload-size-received": str(session.received),
        })
    if "upload" not in commands:
        return gemini_error(400, f"Unsupported upload command: {sorted(commands)}")
    offset = int(request.headers.get("x-goog-upload-offset", "0") or 0)
    chunk = await request.body()
    with fake.lock:
        if offset != session.received:
            return gemini_error(400, f"Upload offset {offset} != received {session.received}.")
        session.received += len(chunk)
        session.digest.update(chunk)
    if "finalize" not in commands:
        return Response(b"", 200, headers={"x-goog-upload-status": "active"})
    if session.declared_size is not None and session.declared_size != session.received:
        return Response(
            json.dumps({"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": (
                f"Declared {session.declared_size} bytes, received {session.received}."
            )}}).encode(),
            400,
            headers={"x-goog-upload-status": "final", "content-type": "application/json"},
        )
    version = "v1beta"
    match = re.match(r"/upload/([^/]+)/", request.url.path)
    if match:
        version = match.group(1)
    with fake.lock:
        fake.uploads.pop(upload_id, None)
        polls = fake.file_processing_polls
        stored = StoredFile(
            name=session.name,
            display_name=session.display_name,
            mime_type=session.mime_type,
            size_bytes=session.received,
            sha256=session.digest.hexdigest(),
            uri=f"{_base_url(request)}/{version}/{session.name}",
            created=datetime.now(UTC),
            state="PROCESSING" if polls > 0 else "ACTIVE",
            polls_until_active=polls,
        )
        fake.files[stored.name] = stored
    return JSONResponse(
        {"file": stored.resource()},
        headers={"x-goog-upload-status": "final"},
    )


app = create_app()


def main(argv: list[str] | None = None) -> None:
    """``python -m stack.fake_gemini --port N``: serve on 127.0.0.1 and print the base URL."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    port = sock.getsockname()[1]
    print(f"fake-gemini listening on http://{args.host}:{port}", flush=True)
    config = uvicorn.Config(app, log_level=args.log_level, lifespan="off", ws="none")
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


if __name__ == "__main__":
    main(sys.argv[1:])
