"""webhook-call: POST a signed JSON body to a URL, behind the SSRF guard.

Signature scheme (receivers check it with `verify_signature`):

    X-Supaflow-Timestamp: <unix seconds>
    X-Supaflow-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body bytes>")>

The timestamp is signed too, so a captured request cannot be replayed outside
the receiver's tolerance window. Execution is at-least-once, so every delivery
of one step carries the same `Idempotency-Key: <job_id>:<step_id>`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from contextlib import closing
from typing import Any

import httpx

from shared.executors import netguard, parse_config
from shared.executors.base import StepContext, StepError
from shared.protocol import http_error_type
from shared.settings import named_secret
from supaflow_models.transformers import WebhookCallConfig

MAX_RESPONSE_BYTES = 64 * 1024
SIGNATURE_VERSION = "v1"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Supaflow-Signature value for `body` sent at `timestamp`."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"{SIGNATURE_VERSION}={mac.hexdigest()}"


def verify_signature(
    secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    tolerance_s: int = 300,
    now: float | None = None,
) -> bool:
    """Receiver side: True when `signature` is ours for exactly these bytes, and recent.

    Pass the raw request body, not a re-serialised parse of it.
    """
    try:
        sent_at = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - sent_at) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).encode()
    return hmac.compare_digest(expected, signature.strip().encode("utf-8", "replace"))


def execute(config: dict[str, Any], inputs: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    cfg = parse_config(WebhookCallConfig, config)
    url = inputs.get("url") or cfg.url
    if not isinstance(url, str) or not url:
        raise StepError("a non-empty 'url' is required in config or inputs", retryable=False,
                        error_type="input")
    if cfg.url and url != cfg.url:
        # The transformer's headers and secret are meant for its own url: a workflow may
        # not send them (or get its bodies signed) elsewhere.
        raise StepError("input 'url' may not override the transformer's config.url",
                        retryable=False, error_type="input")
    secret = _secret(cfg.secret_env_var)
    try:
        # Serialised once: the signature covers exactly the bytes sent.
        body = json.dumps(
            inputs.get("body", {}), separators=(",", ":"), sort_keys=True,
            ensure_ascii=False, allow_nan=False,
        ).encode()
    except (TypeError, ValueError) as exc:
        raise StepError(f"input 'body' is not JSON-serialisable: {exc}", retryable=False,
                        error_type="input") from exc
    timeout_s = min(cfg.timeout_s, ctx.remaining_s())
    if timeout_s <= 0:
        raise StepError("no time left in the step's budget to call the webhook", retryable=True,
                        error_type="timeout")

    timestamp = str(int(time.time()))
    headers = {
        **(cfg.headers or {}),  # first, so configuration cannot override the signed headers
        "Content-Type": "application/json",
        "X-Supaflow-Timestamp": timestamp,
        "X-Supaflow-Signature": sign(secret, timestamp, body),
        "X-Supaflow-Job-Id": ctx.job_id,
        "X-Supaflow-Step-Id": ctx.step_id,
        "X-Supaflow-Attempt": str(ctx.attempt),
        "Idempotency-Key": f"{ctx.job_id}:{ctx.step_id}",
    }
    with netguard.guarded_client(timeout_s, cfg.allow_hosts or ()) as client:
        request = netguard.build_request(client, "POST", url, content=body, headers=headers)
        # A POST is never re-sent to a redirect target: it would skip the receiver's intent.
        with closing(netguard.send_checked(client, request, follow_redirects=False)) as response:
            payload, truncated = _read_capped(response)
            status = response.status_code
            content_type = response.headers.get("Content-Type", "")

    reply = _parse(payload, truncated, content_type)
    if 200 <= status < 300:
        return {"status_code": status, "response": reply}
    detail = f"POST {url} answered {status}: {str(reply)[:200]}"
    raise StepError(detail, retryable=status == 429 or status >= 500,
                    error_type=http_error_type(status))


def _secret(name: str) -> str:
    """The HMAC secret comes from the environment; config only names the variable."""
    secret = named_secret(name)
    if not secret:
        raise StepError(f"env var {name} (the webhook secret) is not set", retryable=False,
                        error_type="config")
    return secret


def _read_capped(response: httpx.Response) -> tuple[bytes, bool]:
    """At most MAX_RESPONSE_BYTES of the body, and whether there was more."""
    received = bytearray()
    try:
        for chunk in response.iter_bytes():
            received += chunk
            if len(received) > MAX_RESPONSE_BYTES:
                return bytes(received[:MAX_RESPONSE_BYTES]), True
    except httpx.TransportError as exc:
        raise StepError(f"reading the webhook's answer failed: {exc!r}", retryable=True,
                        error_type="network") from exc
    except httpx.DecodingError:
        return bytes(received), True
    return bytes(received), False


def _parse(payload: bytes, truncated: bool, content_type: str) -> Any:
    """JSON when the whole answer is JSON, else text (possibly cut at the cap)."""
    text = payload.decode("utf-8", "replace")
    if not truncated and "json" in content_type.lower():
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text
