"""Inbound webhooks: another system POSTs to /webhooks/{id}, and a verified delivery
starts the webhook's workflow once (SQL receive_webhook). Admins manage them (SQL
put_webhook, delete_webhook, list_webhooks).

Signatures are checked here, on the raw body, before anything is parsed or written:
- `standard`: Standard Webhooks (Supabase Auth hooks, Svix): HMAC-SHA256 over
  `{webhook-id}.{webhook-timestamp}.{body}` with the base64 secret after `whsec_`,
  `webhook-signature: v1,<base64> ...`; the delivery id is `webhook-id` (signed).
- `github`: `X-Hub-Signature-256: sha256=<hex>` over the body, keyed by the secret;
  the delivery id is `X-GitHub-Delivery`, which GitHub does not sign (nor a timestamp):
  deliveries are deduplicated on the signature instead, so a captured request replayed
  under a new delivery id starts nothing.
- `stripe`: `Stripe-Signature: t=<unix>,v1=<hex>` over `{t}.{body}`, keyed by the
  endpoint secret; the delivery id is the event's `id` (in the signed body).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from shared import db
from shared.api import first_problem, parse_json
from shared.auth import Caller
from shared.errors import ApiError, bad_request, not_found
from supaflow_models import mapping
from supaflow_models.requests import WebhookRequest

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret


@dataclass(frozen=True)
class Webhook:
    """What verifying and mapping one delivery needs (SQL webhook_for_delivery)."""

    signature: str
    secret: str
    tolerance_s: int
    headers: list[str]
    input_mapping: dict[str, Any] | None


def invalid_signature(message: str) -> ApiError:
    return ApiError(401, "invalid_signature", message)


def new_secret() -> str:
    """A secret every style accepts: Standard Webhooks keys with the base64 part,
    GitHub with the whole string."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _standard_key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)


def _fresh(timestamp: str, tolerance_s: int, now: float) -> None:
    try:
        if len(timestamp) > 20:
            raise ValueError
        sent = int(timestamp)
    except ValueError:
        raise invalid_signature(f"the timestamp {timestamp[:40]!r} is not a number") from None
    if abs(now - sent) > tolerance_s:
        raise invalid_signature(
            f"the signed timestamp is {int(now - sent)} s off this server's clock"
            f" (tolerance {tolerance_s} s): a replay, or a clock to fix")


def _any_equal(expected: str, given: list[str]) -> bool:
    return any(hmac.compare_digest(expected.encode(), g.encode()) for g in given)


def _verify_standard(hook: Webhook, headers: dict[str, str], body: bytes, now: float) -> str:
    delivery, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    _fresh(timestamp, hook.tolerance_s, now)
    signed = f"{delivery}.{timestamp}.".encode() + body
    try:
        key = _standard_key(hook.secret)
    except (binascii.Error, ValueError):
        raise invalid_signature("this webhook's secret is not whsec_<base64>: rotate it") from None
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    given = [s.partition(",")[2] for s in headers["webhook-signature"].split()
             if s.startswith("v1,")]
    if not _any_equal(base64.b64encode(digest).decode(), given):
        raise invalid_signature("webhook-signature does not match the body")
    return delivery


def _verify_github(hook: Webhook, headers: dict[str, str], body: bytes, now: float) -> str:
    digest = hmac.new(hook.secret.encode(), body, hashlib.sha256).hexdigest()
    if not _any_equal(f"sha256={digest}", [headers["x-hub-signature-256"]]):
        raise invalid_signature("X-Hub-Signature-256 does not match the body")
    return f"sha256={digest}"


def _verify_stripe(hook: Webhook, headers: dict[str, str], body: bytes, now: float) -> str:
    pairs = [item.partition("=") for item in headers["stripe-signature"].split(",")]
    timestamp = next((v.strip() for k, _, v in pairs if k.strip() == "t"), "")
    _fresh(timestamp, hook.tolerance_s, now)
    digest = hmac.new(hook.secret.encode(), f"{timestamp}.".encode() + body,
                      hashlib.sha256).hexdigest()
    if not _any_equal(digest, [v.strip() for k, _, v in pairs if k.strip() == "v1"]):
        raise invalid_signature("Stripe-Signature does not match the body")
    event_id = parse_json(body).get("id") if body.strip().startswith(b"{") else None
    if not isinstance(event_id, str):
        raise bad_request("a Stripe event has an id; this body has none")
    return event_id


Verifier = Callable[[Webhook, dict[str, str], bytes, float], str]
VERIFIERS: dict[str, tuple[tuple[str, ...], Verifier]] = {
    "standard": (("webhook-id", "webhook-timestamp", "webhook-signature"), _verify_standard),
    "github": (("x-hub-signature-256", "x-github-delivery"), _verify_github),
    "stripe": (("stripe-signature",), _verify_stripe),
}


def verify(hook: Webhook, headers: dict[str, str], body: bytes, now: float) -> str:
    """What deduplicates a request signed with the webhook's secret (its signed delivery
    id; for GitHub, its signature); 401 otherwise."""
    needed, verifier = VERIFIERS[hook.signature]
    missing = [name for name in needed if not headers.get(name)]
    if missing:
        raise invalid_signature(f"missing header(s): {', '.join(missing)}")
    key = verifier(hook, headers, body, now)
    if not 1 <= len(key) <= 200:
        raise bad_request("the delivery id must be 1-200 characters")
    return key


def receive(webhook_id: str, headers: dict[str, str], body: bytes,
            now: float | None = None) -> dict[str, Any]:
    """POST /webhooks/{id}: 404 unknown, 401 unsigned, 409 paused or replayed; else
    the job this delivery started."""
    found = db.rpc("webhook_for_delivery", {"p_webhook_id": webhook_id})
    if not found:
        raise not_found(f"no webhook {webhook_id[:100]!r}")
    hook = Webhook(**db.obj(found))
    dedup_key = verify(hook, headers, body, time.time() if now is None else now)
    delivery_id = headers["x-github-delivery"] if hook.signature == "github" else dedup_key
    request = {"body": parse_json(body), "delivery_id": delivery_id, "webhook_id": webhook_id,
               "headers": {name: headers[name] for name in hook.headers if name in headers}}
    try:
        job_input = (request if hook.input_mapping is None
                     else mapping.resolve(hook.input_mapping, {"input": request}))
    except mapping.MappingError as exc:
        raise ApiError(422, "unmappable_delivery", f"input_mapping: {exc}") from exc
    started = db.obj(db.rpc("receive_webhook", {
        "p_webhook_id": webhook_id, "p_delivery_id": delivery_id, "p_input": job_input,
        "p_dedup_key": dedup_key}))
    return {"job_id": started["job_id"], "delivery_id": delivery_id}


def _checked(req: WebhookRequest) -> None:
    """What the model alone cannot say: the mapping reads only the request, a
    Standard Webhooks secret is base64."""
    if req.input_mapping is not None:
        try:
            if mapping.step_references(req.input_mapping):
                raise bad_request("input_mapping: reads only $.input (the request), no steps")
        except mapping.MappingError as exc:
            raise bad_request(f"input_mapping: {exc}") from exc
    if req.secret is not None and req.signature == "standard":
        try:
            if len(_standard_key(req.secret)) < 16:
                raise bad_request("secret: at least 16 bytes")
        except (binascii.Error, ValueError) as exc:
            raise bad_request("secret: Standard Webhooks secrets are whsec_<base64>") from exc


def put(caller: Caller, webhook_id: str, body: dict[str, Any]) -> dict[str, Any]:
    try:
        req = WebhookRequest.model_validate(body)
        owner = None if req.owner is None else str(uuid.UUID(req.owner))
    except ValidationError as exc:
        raise bad_request(first_problem(exc)) from exc
    except ValueError as exc:
        raise bad_request("owner: must be a user id (a UUID)") from exc
    _checked(req)
    return db.obj(db.rpc("put_webhook", {
        "p_webhook_id": webhook_id, "p_workflow_id": req.workflow_id,
        "p_signature": req.signature, "p_secret": req.secret, "p_new_secret": new_secret(),
        "p_rotate": req.rotate_secret, "p_tolerance_s": req.tolerance_s,
        "p_headers": sorted({h.lower() for h in req.headers}),
        "p_input_mapping": req.input_mapping, "p_owner": owner, "p_status": req.status,
        "p_claims": caller.claims,
    }))


def delete(caller: Caller, webhook_id: str) -> dict[str, Any]:
    return db.obj(db.rpc("delete_webhook", {"p_webhook_id": webhook_id,
                                            "p_claims": caller.claims}))


def list_webhooks(caller: Caller, query: dict[str, str]) -> dict[str, Any]:
    if query:
        raise bad_request(f"unknown query parameter(s): {', '.join(sorted(query))}")
    return {"webhooks": db.rows(db.rpc("list_webhooks", {"p_claims": caller.claims}))}
