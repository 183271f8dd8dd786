"""webhook-call against a real receiver on 127.0.0.1 that checks signatures itself."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from shared.executors import netguard
from shared.executors.base import StepContext, StepError
from shared.executors.webhook_call import MAX_RESPONSE_BYTES, execute, verify_signature

SECRET = "whsec-test-0123456789"
SECRET_ENV = "SUPAFLOW_SECRET_TEST_WEBHOOK"


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Answers per path with (status, content type, body) and records every delivery."""

    httpd: ThreadingHTTPServer
    answers: dict[str, tuple[int, str, bytes]]
    deliveries: list[Delivery] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def allow(self) -> list[str]:
        return [f"127.0.0.1:{self.port}"]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def verified(self, delivery: Delivery, secret: str = SECRET) -> bool:
        """What a receiver does: check the signature over the raw bytes it got."""
        return verify_signature(
            secret,
            delivery.headers["X-Supaflow-Timestamp"],
            delivery.body,
            delivery.headers["X-Supaflow-Signature"],
        )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec: Receiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            rec.deliveries.append(Delivery(self.path, dict(self.headers.items()), body))
            status, content_type, answer = rec.answers.get(self.path, (404, "text/plain", b"?"))
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(answer)))
            if status == 302:
                self.send_header("Location", "/hook")
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec = Receiver(
        httpd,
        {
            "/hook": (200, "application/json", b'{"received": true, "id": 7}'),
            "/text": (202, "text/plain", b"queued"),
            "/big": (200, "application/json", b'"' + b"a" * (100 * 1024) + b'"'),
            "/fail": (500, "text/plain", b"boom"),
            "/busy": (429, "text/plain", b"later"),
            "/bad": (400, "application/json", b'{"error": "bad payload"}'),
            "/moved": (302, "text/plain", b""),
        },
    )
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield rec
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(netguard.ENV_ALLOWED_HOSTS, raising=False)
    monkeypatch.setenv(SECRET_ENV, SECRET)


def _ctx() -> StepContext:
    """A fresh attempt: its time budget starts now."""
    return StepContext("job-9", "notify", 3, "webhook-call", 60.0)
BODY = {"z": [1, 2, {"b": None, "a": "é"}], "a": 1.5}


def call(receiver: Receiver, path: str, **config: Any) -> dict[str, Any]:
    return execute(
        {"url": receiver.url(path), "secret_env_var": SECRET_ENV, "allow_hosts": receiver.allow,
         **config},
        {"body": BODY},
        _ctx(),
    )


def failure(receiver: Receiver, path: str, **config: Any) -> StepError:
    with pytest.raises(StepError) as info:
        call(receiver, path, **config)
    return info.value


def test_delivers_a_signed_compact_body(receiver: Receiver) -> None:
    out = call(receiver, "/hook", headers={"X-Team": "audio", "X-Supaflow-Signature": "forged"})
    assert out == {"status_code": 200, "response": {"received": True, "id": 7}}
    [delivery] = receiver.deliveries
    assert delivery.body == json.dumps(
        BODY, separators=(",", ":"), sort_keys=True, ensure_ascii=False
    ).encode()
    assert delivery.body.startswith(b'{"a":1.5,"z":')
    assert json.loads(delivery.body) == BODY
    headers = delivery.headers
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Supaflow-Job-Id"] == "job-9"
    assert headers["X-Supaflow-Step-Id"] == "notify"
    assert headers["X-Supaflow-Attempt"] == "3"
    assert headers["Idempotency-Key"] == "job-9:notify"
    assert headers["X-Team"] == "audio"
    assert abs(int(headers["X-Supaflow-Timestamp"]) - time.time()) < 5
    # Independent of our own helper: the documented scheme, computed here.
    expected = hmac.new(
        SECRET.encode(), headers["X-Supaflow-Timestamp"].encode() + b"." + delivery.body,
        hashlib.sha256,
    ).hexdigest()
    assert headers["X-Supaflow-Signature"] == f"v1={expected}"
    assert receiver.verified(delivery)


def test_tampering_and_wrong_secret_fail_verification(receiver: Receiver) -> None:
    call(receiver, "/hook")
    [delivery] = receiver.deliveries
    ts, sig = delivery.headers["X-Supaflow-Timestamp"], delivery.headers["X-Supaflow-Signature"]
    tampered = delivery.body.replace(b"1.5", b"9.5")
    assert tampered != delivery.body
    assert not verify_signature(SECRET, ts, tampered, sig)
    assert not receiver.verified(delivery, secret="another-secret")
    assert not verify_signature(SECRET, str(int(ts) + 1), delivery.body, sig)
    flipped = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    assert not verify_signature(SECRET, ts, delivery.body, flipped)
    assert not verify_signature(SECRET, "not-a-number", delivery.body, sig)
    assert not verify_signature(SECRET, ts, delivery.body, "v1=é")


def test_signature_expires_outside_the_tolerance(receiver: Receiver) -> None:
    call(receiver, "/hook")
    [delivery] = receiver.deliveries
    ts, sig = delivery.headers["X-Supaflow-Timestamp"], delivery.headers["X-Supaflow-Signature"]
    sent = int(ts)
    assert verify_signature(SECRET, ts, delivery.body, sig, now=sent + 299)
    assert not verify_signature(SECRET, ts, delivery.body, sig, now=sent + 301)
    assert not verify_signature(SECRET, ts, delivery.body, sig, now=sent - 301)
    assert verify_signature(SECRET, ts, delivery.body, sig, tolerance_s=1000, now=sent + 900)


def test_text_answer_and_body_url_from_inputs(receiver: Receiver) -> None:
    out = execute(
        {"secret_env_var": SECRET_ENV, "allow_hosts": receiver.allow},
        {"body": [1, 2], "url": receiver.url("/text")},
        _ctx(),
    )
    assert out == {"status_code": 202, "response": "queued"}
    assert receiver.deliveries[0].body == b"[1,2]"


def test_inputs_cannot_send_a_configured_webhook_elsewhere(receiver: Receiver) -> None:
    """The transformer's secret and headers are for its own url: a workflow's inputs may
    not point them at another host (and so get any body signed)."""
    with pytest.raises(StepError) as info:
        execute({"secret_env_var": SECRET_ENV, "url": receiver.url("/hook"),
                 "headers": {"X-Api-Key": "k"}, "allow_hosts": receiver.allow},
                {"body": {}, "url": receiver.url("/text")}, _ctx())
    assert not info.value.retryable and "override" in info.value.message
    assert receiver.deliveries == []


def test_large_answer_is_truncated(receiver: Receiver) -> None:
    out = call(receiver, "/big")
    assert isinstance(out["response"], str)
    assert len(out["response"]) == MAX_RESPONSE_BYTES


@pytest.mark.parametrize(
    ("path", "retryable"),
    [("/fail", True), ("/busy", True), ("/bad", False), ("/missing", False), ("/moved", False)],
)
def test_status_classification(receiver: Receiver, path: str, retryable: bool) -> None:
    error = failure(receiver, path)
    assert error.retryable is retryable
    assert receiver.deliveries[0].path == path
    assert len(receiver.deliveries) == 1  # a 302 is not followed


def test_missing_secret_env_is_permanent(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SECRET_ENV)
    error = failure(receiver, "/hook")
    assert error.retryable is False and SECRET_ENV in error.message
    with pytest.raises(StepError) as info:
        execute({"url": receiver.url("/hook"), "allow_hosts": receiver.allow}, {"body": {}}, _ctx())
    assert info.value.retryable is False
    assert receiver.deliveries == []


def test_refuses_local_receiver_without_allowlist(receiver: Receiver) -> None:
    error = failure(receiver, "/hook", allow_hosts=[])
    assert error.retryable is False and "loopback" in error.message
    assert receiver.deliveries == []


def test_unserialisable_body_is_permanent(receiver: Receiver) -> None:
    with pytest.raises(StepError) as info:
        execute(
            {
                "url": receiver.url("/hook"),
                "secret_env_var": SECRET_ENV,
                "allow_hosts": receiver.allow,
            },
            {"body": {"x": float("nan")}},
            _ctx(),
        )
    assert info.value.retryable is False
    assert receiver.deliveries == []
