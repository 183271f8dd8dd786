"""Inbound webhooks (DESIGN.md section 11, seed 004): another system's signed delivery to
POST /webhooks/{id} starts the webhook's workflow once. Deliveries are signed here the
way each sender signs them: Standard Webhooks with its reference library, Stripe's by
its documented scheme checked against Stripe's own library, GitHub's by its docs."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import standardwebhooks
import stripe
from psycopg.types.json import Jsonb

from supaflow_client.client import Client, SupaflowError
from testkit.api import Api
from testkit.jobs import wait_status
from testkit.stack import Stack, User
from testkit.workflows import chain, create_workflow

Signer = Callable[[str, bytes, str, int], dict[str, str]]


def sign_standard(secret: str, body: bytes, delivery: str, at: int) -> dict[str, str]:
    signature = standardwebhooks.Webhook(secret).sign(
        delivery, datetime.fromtimestamp(at, UTC), body.decode())
    return {"webhook-id": delivery, "webhook-timestamp": str(at), "webhook-signature": signature}


def sign_github(secret: str, body: bytes, delivery: str, at: int) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={digest}", "X-GitHub-Delivery": delivery,
            "X-GitHub-Event": "push"}


def sign_stripe(secret: str, body: bytes, delivery: str, at: int) -> dict[str, str]:
    digest = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    header = f"t={at},v1={digest}"
    if abs(time.time() - at) < 300:  # Stripe's own verifier accepts what we send
        stripe.WebhookSignature.verify_header(body.decode(), header, secret, tolerance=300)
    return {"Stripe-Signature": header}


SIGNERS: dict[str, Signer] = {"standard": sign_standard, "github": sign_github,
                              "stripe": sign_stripe}
# A workflow that reads the delivery's body.
FROM_BODY = {"steps": [{"id": "s1", "transformer": "transform", "inputs": {"n": "$.input.body.n"}}],
             "output": {"n": "$.steps.s1.output.n"}}
STRIPE_SECRET = "whsec_" + "stripe0test0endpoint0secret"


def body_for(style: str, delivery: str, **extra: Any) -> bytes:
    """A sender's body: Stripe's delivery id is its event's id."""
    event = {"id": delivery, "type": "invoice.paid"} if style == "stripe" else {"action": "opened"}
    return json.dumps({**event, "n": 7, **extra}).encode()


def put(api: Api, token: str, webhook_id: str, **body: Any) -> Any:
    return api.request("PUT", f"/webhooks/{webhook_id}", token, json=body)


def deliver(api: Api, webhook_id: str, body: bytes, headers: dict[str, str]) -> Any:
    return api.request("POST", f"/webhooks/{webhook_id}",
                       headers={"Content-Type": "application/json", **headers}, content=body)


def new_webhook(stack: Stack, api: Api, style: str, **extra: Any) -> tuple[str, str, str]:
    """(webhook id, workflow id, secret) of a fresh webhook of this signature style."""
    wid = create_workflow(stack, FROM_BODY)
    webhook_id = f"wh-{uuid.uuid4().hex[:8]}"
    given = {"secret": STRIPE_SECRET} if style == "stripe" else {}
    saved = put(api, stack.sec.service_role_key, webhook_id, workflow_id=wid, signature=style,
                **given, **extra)
    assert saved.status_code == 200, saved.text
    return webhook_id, wid, saved.json()["secret"]


def webhook_jobs(stack: Stack, webhook_id: str) -> list[tuple[Any, ...]]:
    return stack.sql(
        "select j.id::text, j.origin, j.input_data, e.detail -> 'origin' from workflow.jobs j"
        " join workflow.job_events e on e.job_id = j.id and e.event_type = 'job_created'"
        " where e.detail -> 'origin' ->> 'webhook_id' = %s order by j.created_at", (webhook_id,))


def witness(stack: Stack, webhook_id: str) -> tuple[Any, ...]:
    """What a refused delivery must leave as it was."""
    return stack.sql(
        "select (select count(*) from workflow.jobs), (select count(*) from"
        " workflow.webhook_deliveries where webhook_id = %s), (select last_triggered_at from"
        " workflow.webhooks where id = %s)", (webhook_id, webhook_id))[0]


@pytest.mark.parametrize("style", SIGNERS)
def test_a_signed_delivery_starts_one_job(stack: Stack, api: Api, style: str) -> None:
    webhook_id, _, secret = new_webhook(stack, api, style, headers=["X-GitHub-Event"])
    delivery = f"evt_{uuid.uuid4().hex}"
    body = body_for(style, delivery)
    headers = SIGNERS[style](secret, body, delivery, int(time.time()))
    started = deliver(api, webhook_id, body, headers)
    assert started.status_code == 202, started.text
    job_id = started.json()["job_id"]
    assert started.json()["delivery_id"] == delivery

    ((found, origin, job_input, detail),) = webhook_jobs(stack, webhook_id)
    assert (found, origin) == (job_id, "webhook")
    assert detail == {"type": "webhook", "webhook_id": webhook_id, "delivery_id": delivery}
    assert job_input == {"body": json.loads(body), "delivery_id": delivery,
                         "webhook_id": webhook_id,
                         "headers": {"x-github-event": "push"} if style == "github" else {}}
    assert wait_status(stack, job_id, "completed", 30) == "completed"
    (last,) = stack.sql("select last_triggered_at from workflow.webhooks where id = %s",
                        (webhook_id,))[0]
    assert last is not None

    # The same delivery again (a sender's retry, or a replay): no second job.
    again = deliver(api, webhook_id, body, headers)
    assert again.status_code == 409, again.text
    assert again.json()["error"]["code"] == "duplicate_delivery"
    assert job_id in again.json()["error"]["message"]
    assert len(webhook_jobs(stack, webhook_id)) == 1
    if style == "github":  # its delivery id is unsigned: a replay under a new one is caught
        replay = deliver(api, webhook_id, body, {**headers, "X-GitHub-Delivery": "forged-1"})
        assert replay.status_code == 409, replay.text
        assert len(webhook_jobs(stack, webhook_id)) == 1


def _wrong_secret(style: str, secret: str) -> str:
    return STRIPE_SECRET + "x" if style == "stripe" else "whsec_" + "A" * 44


@pytest.mark.parametrize("style", SIGNERS)
def test_a_bad_signature_is_a_401_and_starts_nothing(stack: Stack, api: Api, style: str) -> None:
    webhook_id, _, secret = new_webhook(stack, api, style)
    now = int(time.time())
    delivery = f"evt_{uuid.uuid4().hex}"
    body = body_for(style, delivery)
    good = SIGNERS[style](secret, body, delivery, now)
    signature_header = next(h for h in good if "signature" in h.lower())
    cases: dict[str, tuple[bytes, dict[str, str]]] = {
        "wrong secret": (body, SIGNERS[style](_wrong_secret(style, secret), body, delivery, now)),
        "tampered body": (body_for(style, delivery, n=8), good),
        "no signature": (body, {k: v for k, v in good.items() if k != signature_header}),
        "garbage signature": (body, {**good, signature_header: "v1,x t=,v1=" + "0" * 64}),
    }
    if style != "github":  # GitHub signs no timestamp
        cases["ten minutes old"] = (body, SIGNERS[style](secret, body, delivery, now - 600))
        cases["ten minutes ahead"] = (body, SIGNERS[style](secret, body, delivery, now + 600))
    if style == "standard":  # the delivery id is signed: a replay cannot change it
        cases["another delivery id"] = (body, {**good, "webhook-id": "msg_other"})
        cases["a 400-digit timestamp"] = (body, {**good, "webhook-timestamp": "9" * 400})
    if style == "stripe":
        cases["a 400-digit timestamp"] = (body, {"Stripe-Signature": f"t={'9' * 400},v1=00"})
    before = witness(stack, webhook_id)
    for case, (sent, headers) in cases.items():
        refused = deliver(api, webhook_id, sent, headers)
        assert refused.status_code == 401, (case, refused.text)
        assert refused.json()["error"]["code"] == "invalid_signature", (case, refused.text)
    assert witness(stack, webhook_id) == before
    assert deliver(api, webhook_id, body, good).status_code == 202  # the good one still works


def test_the_timestamp_tolerance_is_the_webhooks(stack: Stack, api: Api) -> None:
    webhook_id, _, secret = new_webhook(stack, api, "standard", tolerance_s=3600)
    body = body_for("standard", "msg_1")
    old = sign_standard(secret, body, "msg_1", int(time.time()) - 1800)
    assert deliver(api, webhook_id, body, old).status_code == 202


def test_unknown_and_paused_webhooks_are_refused(stack: Stack, api: Api) -> None:
    body = body_for("standard", "msg_1")
    unknown = deliver(api, "wh-nothing-here", body,
                      sign_standard("whsec_" + "A" * 44, body, "msg_1", int(time.time())))
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    assert deliver(api, "x" * 5000, body, {}).status_code == 404

    webhook_id, wid, secret = new_webhook(stack, api, "standard", status="paused")
    before = witness(stack, webhook_id)
    paused = deliver(api, webhook_id, body, sign_standard(secret, body, "msg_1", int(time.time())))
    assert paused.status_code == 409 and paused.json()["error"]["code"] == "webhook_paused"
    assert witness(stack, webhook_id) == before
    # Resumed: the same delivery (never received while paused) starts its job.
    assert put(api, stack.sec.service_role_key, webhook_id, workflow_id=wid).json()["secret"] is None
    resumed = deliver(api, webhook_id, body, sign_standard(secret, body, "msg_1", int(time.time())))
    assert resumed.status_code == 202, resumed.text


def test_a_delivery_refused_for_its_content_starts_nothing(stack: Stack, api: Api) -> None:
    webhook_id, _, secret = new_webhook(stack, api, "github", input_mapping={
        "action": "$.input.body.action", "event": "$.input.headers.x-github-event",
        "summary": "{{ $.input.body.action }} #{{ $.input.body.n }}"}, headers=["x-github-event"])
    before = witness(stack, webhook_id)
    for body, status, code in (
            (json.dumps({"zen": "no action here"}).encode(), 422, "unmappable_delivery"),
            (b"payload=%7B%7D", 400, "invalid_json"),
            (b"[" * 200 + b"]" * 200, 400, "invalid_json"),
            (json.dumps({"action": "x" * 100, "deep": [[[[[[[[[[[[]]]]]]]]]]]]}).encode()
             + b" " * (1024 * 1024), 413, "payload_too_large")):
        headers = sign_github(secret, body, uuid.uuid4().hex, 0)
        refused = deliver(api, webhook_id, body, headers)
        assert (refused.status_code, refused.json()["error"]["code"]) == (status, code), refused.text
    assert witness(stack, webhook_id) == before

    body = json.dumps({"action": "opened", "n": 12}).encode()
    started = deliver(api, webhook_id, body, sign_github(secret, body, "d-1", 0))
    assert started.status_code == 202, started.text
    ((_, _, job_input, _),) = webhook_jobs(stack, webhook_id)
    assert job_input == {"action": "opened", "event": "push", "summary": "opened #12"}


def test_secrets_are_shown_once_and_rotate(stack: Stack, api: Api) -> None:
    key = stack.sec.service_role_key
    webhook_id, wid, secret = new_webhook(stack, api, "standard")
    assert secret.startswith("whsec_")
    listed = api.request("GET", "/webhooks", key).json()["webhooks"]
    (mine,) = [w for w in listed if w["webhook_id"] == webhook_id]
    assert "secret" not in mine and mine["path"] == f"/webhooks/{webhook_id}"
    assert secret not in json.dumps(listed)
    kept = put(api, key, webhook_id, workflow_id=wid)
    assert kept.json()["secret"] is None and kept.json()["created"] is False

    rotated = put(api, key, webhook_id, workflow_id=wid, rotate_secret=True).json()["secret"]
    assert rotated.startswith("whsec_") and rotated != secret
    body = body_for("standard", "msg_1")
    now = int(time.time())
    assert deliver(api, webhook_id, body, sign_standard(secret, body, "msg_1", now)).status_code == 401
    assert deliver(api, webhook_id, body, sign_standard(rotated, body, "msg_1", now)).status_code == 202


def test_the_client_registers_a_webhook_and_delivers_to_it(stack: Stack) -> None:
    wid = create_workflow(stack, chain(1))
    webhook_id = f"wh-{uuid.uuid4().hex[:8]}"
    with Client(stack.api_url, stack.sec.service_role_key) as admin:
        secret = admin.put_webhook(webhook_id, wid, input_mapping={"n": "$.input.body.n"})["secret"]
        assert webhook_id in [w["webhook_id"] for w in admin.list_webhooks()["webhooks"]]
        body = json.dumps({"n": 5}).encode()
        sent = admin.deliver_webhook(webhook_id, body,
                                     sign_standard(secret, body, "msg_c", int(time.time())))
        assert wait_status(stack, sent["job_id"], "completed", 30) == "completed"
        with pytest.raises(SupaflowError) as replay:
            admin.deliver_webhook(webhook_id, body,
                                  sign_standard(secret, body, "msg_c", int(time.time())))
        assert replay.value.status == 409
        assert admin.delete_webhook(webhook_id) == {"webhook_id": webhook_id, "deleted": True}
    assert stack.sql("select count(*) from workflow.webhook_deliveries where webhook_id = %s",
                     (webhook_id,)) == [(0,)]


def tenant_user(stack: Stack, tenant: str | None, *, admin: bool) -> User:
    user = stack.create_user()
    app_metadata: dict[str, Any] = {"supaflow_role": "admin"} if admin else {}
    if tenant is not None:
        app_metadata["tenant_id"] = tenant
    # As Supabase keeps it: the token's app_metadata is the user's raw_app_meta_data.
    stack.sql("update auth.users set raw_app_meta_data = %s where id = %s",
              (Jsonb(app_metadata), user.id))
    return User(user.id, user.email, stack.token(user.id, app_metadata=app_metadata),
                user.es256_token)


def test_admins_manage_their_tenants_webhooks_only(stack: Stack, api: Api) -> None:
    tenant_a, tenant_b = f"ta-{uuid.uuid4().hex[:6]}", f"tb-{uuid.uuid4().hex[:6]}"
    admin_a = tenant_user(stack, tenant_a, admin=True)
    admin_b = tenant_user(stack, tenant_b, admin=True)
    member_a = tenant_user(stack, tenant_a, admin=False)
    global_wid = create_workflow(stack, chain(1))
    wid_a = create_workflow(stack, chain(1))
    stack.sql("update workflow.workflows set tenant_id = %s where id = %s", (tenant_a, wid_a))
    webhook_id = f"wh-{uuid.uuid4().hex[:8]}"

    assert put(api, member_a.token, webhook_id, workflow_id=wid_a).status_code == 403
    assert api.request("GET", "/webhooks", member_a.token).status_code == 403
    assert put(api, admin_a.token, webhook_id, workflow_id=global_wid).status_code == 400
    assert put(api, admin_b.token, webhook_id, workflow_id=wid_a).status_code == 400
    assert put(api, admin_a.token, webhook_id, workflow_id=wid_a,
               owner=admin_b.id).status_code == 400  # another tenant's user
    saved = put(api, admin_a.token, webhook_id, workflow_id=wid_a, owner=member_a.id)
    assert saved.status_code == 200 and saved.json()["tenant_id"] == tenant_a, saved.text

    assert put(api, admin_b.token, webhook_id, workflow_id=wid_a).status_code == 404
    assert api.request("DELETE", f"/webhooks/{webhook_id}", admin_b.token).status_code == 404
    assert webhook_id not in json.dumps(api.request("GET", "/webhooks", admin_b.token).json())
    assert webhook_id in json.dumps(api.request("GET", "/webhooks", admin_a.token).json())

    # Its jobs are the tenant's, for the owner.
    body = body_for("standard", "msg_t")
    started = deliver(api, webhook_id, body,
                      sign_standard(saved.json()["secret"], body, "msg_t", int(time.time())))
    assert started.status_code == 202, started.text
    assert stack.sql("select user_id::text, tenant_id from workflow.jobs where id = %s",
                     (started.json()["job_id"],)) == [(member_a.id, tenant_a)]
    assert api.request("DELETE", f"/webhooks/{webhook_id}", admin_a.token).status_code == 200


@pytest.mark.parametrize(("change", "words"), [
    ({"signature": "slack"}, "signature"),
    ({"secret": "short"}, "secret"),
    ({"secret": "whsec_not base64 at all!!"}, "secret"),
    ({"tolerance_s": 0}, "tolerance_s"),
    ({"tolerance_s": "300"}, "tolerance_s"),
    ({"headers": ["ok", "not a header"]}, "headers"),
    ({"headers": [f"h{i}" for i in range(21)]}, "headers"),
    ({"input_mapping": {"x": "$.steps.a.output"}}, "input_mapping"),
    ({"input_mapping": {"x": "$.input..x"}}, "input_mapping"),
    ({"owner": "nobody"}, "owner"),
    ({"owner": str(uuid.uuid4())}, "owner"),
    ({"status": "stopped"}, "status"),
    ({"workflow_id": "wf-does-not-exist"}, "workflow_id"),
    ({"signature": "stripe"}, "secret"),
    ({"surprise": 1}, "surprise"),
])
def test_bad_webhooks_are_400s_and_save_nothing(
        stack: Stack, api: Api, change: dict[str, Any], words: str) -> None:
    wid = create_workflow(stack, chain(1))
    webhook_id = f"wh-{uuid.uuid4().hex[:8]}"
    refused = put(api, stack.sec.service_role_key, webhook_id, **{"workflow_id": wid, **change})
    assert refused.status_code == 400 and words in refused.json()["error"]["message"], refused.text
    assert stack.sql("select count(*) from workflow.webhooks where id = %s", (webhook_id,)) \
        == [(0,)]
    bad_id = put(api, stack.sec.service_role_key, "has space", workflow_id=wid)
    assert bad_id.status_code == 400, bad_id.text
