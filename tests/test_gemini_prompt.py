"""gemini-prompt with the real google-genai SDK against stack.fake_gemini and moto's S3 server.

Nothing here reaches Google: the executor's ``base_url`` points at the fake, which records
what arrived on the wire so the tests can check it, and injects faults on request.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import jsonschema
import pytest
import uvicorn
from moto.server import ThreadedMotoServer

from shared import storage
from shared.executors import gemini_prompt
from shared.executors.base import StepContext, StepError
from shared.settings import settings
from stack.fake_gemini import create_app, fake_value

MODEL = "gemini-2.5-flash"
API_KEY = "test-key-not-secret"
BUCKET = "gemini-test"
TRANSCRIPT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "language": {"type": "string"},
        "segments": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "start": {"type": "string", "pattern": "^[0-9]{2}:[0-9]{2}$"},
                    "end": {"type": "string", "pattern": "^[0-9]{2}:[0-9]{2}$"},
                    "text": {"type": "string"},
                },
                "required": ["start", "end", "text"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["language", "segments"],
    "additionalProperties": False,
}


@dataclass
class FakeGemini:
    base_url: str
    http: httpx.Client

    def fault(self, **spec: Any) -> None:
        self.http.post("/_control/faults", json=spec).raise_for_status()

    def requests(self) -> list[dict[str, Any]]:
        body: dict[str, Any] = self.http.get("/_control/requests").json()
        return list(body["requests"])

    def files(self) -> list[dict[str, Any]]:
        body: dict[str, Any] = self.http.get("/_control/files").json()
        return list(body["files"])


@pytest.fixture(scope="module")
def fake_gemini() -> Iterator[FakeGemini]:
    """The fake Gemini server under uvicorn in a thread, on a free 127.0.0.1 port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(), log_level="warning", lifespan="off", ws="none")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "fake gemini did not start"
        time.sleep(0.01)
    base_url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base_url, timeout=10) as http:
        yield FakeGemini(base_url, http)
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """moto's real S3 server on a free port."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(autouse=True)
def env(
    monkeypatch: pytest.MonkeyPatch, fake_gemini: FakeGemini, s3_server: str
) -> Iterator[None]:
    monkeypatch.setenv("S3_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("GEMINI_BASE_URL", raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", API_KEY)
    monkeypatch.setenv("SUPAFLOW_ALLOWED_HOSTS", "127.0.0.1")  # the fake's host, for config.base_url
    storage.client.cache_clear()
    storage.ensure_bucket(BUCKET)
    fake_gemini.http.post("/_control/reset").raise_for_status()
    yield
    storage.client.cache_clear()


def ctx(timeout_s: float = 60.0) -> StepContext:
    return StepContext(job_id="job-1", step_id="transcribe", attempt=1,
                       transformer_id="gemini-prompt", timeout_s=timeout_s)


def put_object(key: str, data: bytes, content_type: str) -> dict[str, Any]:
    """Store bytes and return what http-download would output for them."""
    storage.upload(BUCKET, key, io.BytesIO(data), content_type)
    return {"bucket": BUCKET, "key": key, "size": len(data), "content_type": content_type,
            "sha256": hashlib.sha256(data).hexdigest()}


def config(fake: FakeGemini, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "Transcribe the audio.", "base_url": fake.base_url,
            **extra}


# --------------------------------------------------------------------------- happy paths


def test_structured_output_is_parsed_and_conforms(fake_gemini: FakeGemini) -> None:
    out = gemini_prompt.execute(
        config(fake_gemini, response_schema=TRANSCRIPT_SCHEMA),
        {"prompt": "Transcribe this, with timestamps."},
        ctx(),
    )

    jsonschema.validate(out["json"], TRANSCRIPT_SCHEMA)
    assert out["json"]["segments"][0]["start"] == "00:00"
    assert out["text"].startswith("{")
    assert out["model"] == f"{MODEL}-fake"  # modelVersion from the response, not the config
    assert out["usage"]["prompt_tokens"] > 0 and out["usage"]["output_tokens"] > 0
    [seen] = fake_gemini.requests()
    assert seen["model"] == MODEL
    assert seen["api_key"] == API_KEY
    assert seen["generation_config"]["responseMimeType"] == "application/json"
    assert seen["generation_config"]["responseJsonSchema"] == TRANSCRIPT_SCHEMA
    assert seen["parts"] == [{"kind": "text", "size": len("Transcribe this, with timestamps.")}]


def test_gemini_dialect_schema_goes_as_response_schema(fake_gemini: FakeGemini) -> None:
    schema = {"type": "OBJECT", "properties": {"mood": {"type": "STRING",
                                                        "enum": ["calm", "tense"]}}}
    out = gemini_prompt.execute(config(fake_gemini, response_schema=schema), {}, ctx())

    assert out["json"] == {"mood": "calm"}
    [seen] = fake_gemini.requests()
    assert "responseSchema" in seen["generation_config"]
    assert "responseJsonSchema" not in seen["generation_config"]


def test_plain_text_without_schema(fake_gemini: FakeGemini) -> None:
    out = gemini_prompt.execute(config(fake_gemini, temperature=0.25), {}, ctx())

    assert "json" not in out
    assert out["text"].startswith("fake-gemini received 1 parts: 1 text, 0 inline, 0 file.")
    assert set(out["usage"]) == {"prompt_tokens", "output_tokens"}
    [seen] = fake_gemini.requests()
    assert seen["generation_config"] == {"temperature": 0.25}
    assert seen["parts"] == [{"kind": "text", "size": len("Transcribe the audio.")}]


def test_base_url_from_environment(
    fake_gemini: FakeGemini, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEMINI_BASE_URL", fake_gemini.base_url)
    settings.cache_clear()  # the environment changed
    cfg = {"model": MODEL, "prompt": "hi"}
    out = gemini_prompt.execute(cfg, {}, ctx())

    assert out["text"].startswith("fake-gemini received 1 parts")
    assert len(fake_gemini.requests()) == 1


def test_small_audio_goes_inline(fake_gemini: FakeGemini) -> None:
    audio = os.urandom(50_000)
    file = put_object("audio/small.mp3", audio, "audio/mpeg")

    out = gemini_prompt.execute(config(fake_gemini), {"file": file}, ctx())

    assert "inline part: audio/mpeg 50000 bytes" in out["text"]
    [seen] = fake_gemini.requests()
    assert seen["used_file_uri"] is False
    inline, text = seen["parts"]  # media first, then the instruction
    assert inline == {"kind": "inline_data", "mime_type": "audio/mpeg", "size": 50_000,
                      "sha256": hashlib.sha256(audio).hexdigest()}
    assert text["kind"] == "text"
    assert fake_gemini.files() == []


def test_content_type_from_storage_when_not_given(fake_gemini: FakeGemini) -> None:
    audio = os.urandom(1234)
    file = put_object("audio/clip.wav", audio, "audio/wav")
    del file["content_type"]

    gemini_prompt.execute(config(fake_gemini), {"files": [file]}, ctx())

    [seen] = fake_gemini.requests()
    assert seen["parts"][0]["mime_type"] == "audio/wav"
    assert seen["parts"][0]["size"] == 1234


@pytest.mark.parametrize("size", [3_000, 8 * 1024 * 1024 + 17], ids=["one-chunk", "two-chunks"])
def test_large_audio_goes_through_files_api(fake_gemini: FakeGemini, size: int) -> None:
    audio = os.urandom(size)
    file = put_object("audio/large.mp3", audio, "audio/mpeg")

    out = gemini_prompt.execute(
        config(fake_gemini, inline_max_bytes=size - 1), {"files": [file]}, ctx()
    )

    assert f"file part: audio/mpeg {size} bytes" in out["text"]
    [seen] = fake_gemini.requests()
    assert seen["used_file_uri"] is True
    part = seen["parts"][0]
    assert part["kind"] == "file_data"
    assert part["file_uri"].startswith(f"{fake_gemini.base_url}/v1beta/files/")
    assert part["mime_type"] == "audio/mpeg"
    assert part["size"] == size
    assert part["sha256"] == hashlib.sha256(audio).hexdigest()
    assert fake_gemini.files() == []  # deleted after use


def test_inline_budget_is_shared_between_files(fake_gemini: FakeGemini) -> None:
    first = put_object("audio/a.mp3", os.urandom(600), "audio/mpeg")
    second = put_object("audio/b.mp3", os.urandom(600), "audio/mpeg")

    gemini_prompt.execute(
        config(fake_gemini, inline_max_bytes=1000), {"files": [first, second]}, ctx()
    )

    [seen] = fake_gemini.requests()
    assert [p["kind"] for p in seen["parts"]] == ["inline_data", "file_data", "text"]


def test_waits_for_uploaded_file_to_become_active(fake_gemini: FakeGemini) -> None:
    fake_gemini.http.post("/_control/config", json={"file_processing_polls": 1})
    file = put_object("audio/processing.mp3", os.urandom(2_000), "audio/mpeg")

    out = gemini_prompt.execute(config(fake_gemini, inline_max_bytes=0), {"file": file}, ctx())

    assert "file part: audio/mpeg 2000 bytes" in out["text"]
    assert fake_gemini.requests()[0]["status"] == 200


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("status", "gemini_status", "retryable"),
    [(429, "RESOURCE_EXHAUSTED", True), (500, "INTERNAL", True), (503, "UNAVAILABLE", True),
     (400, "INVALID_ARGUMENT", False), (403, "PERMISSION_DENIED", False)],
)
def test_api_errors_map_to_retryable_or_permanent(
    fake_gemini: FakeGemini, status: int, gemini_status: str, retryable: bool
) -> None:
    fake_gemini.fault(status=status, count=2)

    with pytest.raises(StepError) as info:
        gemini_prompt.execute(config(fake_gemini), {}, ctx())

    assert info.value.retryable is retryable
    assert str(status) in info.value.message and gemini_status in info.value.message
    # Exactly one call: the SDK's own retries are off, the engine decides.
    assert [r["status"] for r in fake_gemini.requests()] == [status]


def test_fault_count_is_consumed(fake_gemini: FakeGemini) -> None:
    fake_gemini.fault(status=429, count=1)
    with pytest.raises(StepError):
        gemini_prompt.execute(config(fake_gemini), {}, ctx())
    out = gemini_prompt.execute(config(fake_gemini), {}, ctx())
    assert out["text"].startswith("fake-gemini received")
    assert [r["status"] for r in fake_gemini.requests()] == [429, 200]


def test_upload_failure_is_retryable(fake_gemini: FakeGemini) -> None:
    fake_gemini.fault(status=503, count=1, target="upload")
    file = put_object("audio/up.mp3", os.urandom(100), "audio/mpeg")

    with pytest.raises(StepError) as info:
        gemini_prompt.execute(config(fake_gemini, inline_max_bytes=10), {"file": file}, ctx())

    assert info.value.retryable is True
    assert "upload" in info.value.message
    assert fake_gemini.requests() == []


def test_timeout_is_retryable(fake_gemini: FakeGemini) -> None:
    fake_gemini.fault(delay_s=3.0, count=1)
    started = time.monotonic()

    with pytest.raises(StepError) as info:
        gemini_prompt.execute(config(fake_gemini, timeout_s=1), {}, ctx())

    assert info.value.retryable is True
    assert "timed out" in info.value.message
    assert time.monotonic() - started < 2.5


def test_connection_refused_is_retryable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    cfg = {"model": MODEL, "prompt": "hi", "base_url": dead_url}

    with pytest.raises(StepError) as info:
        gemini_prompt.execute(cfg, {}, ctx())

    assert info.value.retryable is True


def test_invalid_json_with_schema_is_permanent(fake_gemini: FakeGemini) -> None:
    fake_gemini.fault(text="Sure! Here is your transcript: ...", count=1)

    with pytest.raises(StepError) as info:
        gemini_prompt.execute(config(fake_gemini, response_schema=TRANSCRIPT_SCHEMA), {}, ctx())

    assert info.value.retryable is False
    assert "not valid JSON" in info.value.message


def test_json_not_matching_schema_is_permanent(fake_gemini: FakeGemini) -> None:
    fake_gemini.fault(text='{"language": "en", "segments": "none"}', count=1)

    with pytest.raises(StepError) as info:
        gemini_prompt.execute(config(fake_gemini, response_schema=TRANSCRIPT_SCHEMA), {}, ctx())

    assert info.value.retryable is False
    assert "segments" in info.value.message


def test_missing_api_key_env_var_is_permanent(
    fake_gemini: FakeGemini, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SUPAFLOW_SECRET_TEST_GEMINI_KEY", raising=False)

    with pytest.raises(StepError) as info:
        gemini_prompt.execute(
            config(fake_gemini, api_key_env_var="SUPAFLOW_SECRET_TEST_GEMINI_KEY"), {}, ctx()
        )

    assert info.value.retryable is False
    assert "SUPAFLOW_SECRET_TEST_GEMINI_KEY" in info.value.message
    assert fake_gemini.requests() == []


def test_key_is_read_from_the_named_env_var(
    fake_gemini: FakeGemini, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUPAFLOW_SECRET_TEST_GEMINI_KEY", "other-key")
    gemini_prompt.execute(
        config(fake_gemini, api_key_env_var="SUPAFLOW_SECRET_TEST_GEMINI_KEY"), {}, ctx()
    )
    assert fake_gemini.requests()[0]["api_key"] == "other-key"


def test_api_key_in_config_is_refused(fake_gemini: FakeGemini) -> None:
    with pytest.raises(StepError) as info:
        gemini_prompt.execute(config(fake_gemini, api_key="literal"), {}, ctx())
    assert info.value.retryable is False
    assert fake_gemini.requests() == []


def test_missing_object_is_permanent(fake_gemini: FakeGemini) -> None:
    file = {"bucket": BUCKET, "key": "audio/does-not-exist.mp3", "content_type": "audio/mpeg"}

    with pytest.raises(StepError) as info:
        gemini_prompt.execute(config(fake_gemini), {"file": file}, ctx())

    assert info.value.retryable is False
    assert fake_gemini.requests() == []


@pytest.mark.parametrize(
    ("cfg", "inputs"),
    [({"prompt": "x"}, {}), ({"model": MODEL}, {}), ({"model": MODEL}, {"prompt": ""}),
     ({"model": MODEL, "prompt": "x", "response_schema": "object"}, {}),
     ({"model": MODEL, "prompt": "x"}, {"files": {"bucket": BUCKET}})],
    ids=["no-model", "no-prompt", "empty-prompt", "schema-not-object", "files-not-list"],
)
def test_bad_config_is_permanent(
    fake_gemini: FakeGemini, cfg: dict[str, Any], inputs: dict[str, Any]
) -> None:
    with pytest.raises(StepError) as info:
        gemini_prompt.execute({**cfg, "base_url": fake_gemini.base_url}, inputs, ctx())
    assert info.value.retryable is False
    assert fake_gemini.requests() == []


# --------------------------------------------------------------------------- the fake itself


def test_fake_requires_an_api_key(fake_gemini: FakeGemini) -> None:
    url = f"/v1beta/models/{MODEL}:generateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}

    missing = fake_gemini.http.post(url, json=body)
    empty = fake_gemini.http.post(url, json=body, headers={"x-goog-api-key": ""})
    ok = fake_gemini.http.post(url, json=body, headers={"x-goog-api-key": "k"})

    assert missing.status_code == 403
    assert missing.json()["error"]["status"] == "PERMISSION_DENIED"
    assert empty.status_code == 400
    assert empty.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert ok.status_code == 200
    assert ok.json()["candidates"][0]["content"]["parts"][0]["text"].startswith("fake-gemini")


def test_fake_values_follow_the_schema() -> None:
    schema: dict[str, Any] = {
        "$defs": {"kind": {"type": "string", "enum": ["a", "b"]}},
        "type": "object",
        "properties": {
            "count": {"type": "integer", "minimum": 10, "maximum": 20},
            "ratio": {"type": "number", "maximum": 0.5},
            "ok": {"type": "boolean"},
            "when": {"type": "string", "format": "date-time"},
            "maybe": {"anyOf": [{"type": "null"}, {"type": "string", "minLength": 30}]},
            "kinds": {"type": "array", "items": {"$ref": "#/$defs/kind"}, "minItems": 3},
            "pair": {"type": "array", "prefixItems": [{"type": "integer"}, {"const": "x"}]},
        },
        "required": ["count", "ratio", "ok", "when", "maybe", "kinds", "pair"],
    }
    value = fake_value(schema)
    jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())
    assert value["kinds"] == ["a", "b", "a"]


def test_the_key_goes_only_to_google_or_an_allowlisted_host(
        fake_gemini: FakeGemini, monkeypatch: pytest.MonkeyPatch) -> None:
    """An admin's config.base_url must not send the deployment's Gemini key elsewhere."""
    monkeypatch.setenv("SUPAFLOW_ALLOWED_HOSTS", "")
    settings.cache_clear()
    before = len(fake_gemini.requests())
    with pytest.raises(StepError) as info:
        gemini_prompt.execute(config(fake_gemini), {}, ctx())
    assert not info.value.retryable and "SUPAFLOW_ALLOWED_HOSTS" in info.value.message
    assert len(fake_gemini.requests()) == before
