"""Seed 002's alerts: rules in SQL (workflow.alert_rules, editable by admins), evaluated
after each scheduled orchestrator pass (SQL evaluate_alerts records each firing and
each resolution once), and delivered once to the rule's webhook, signed like
webhook-call (X-Supaflow-Timestamp, X-Supaflow-Signature with SUPAFLOW_WEBHOOK_SECRET).
A delivery that fails is tried again after the next pass; receivers deduplicate on
`Idempotency-Key: alert:<id>:<status>`.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared import db
from shared.api import first_problem
from shared.auth import Caller
from shared.errors import bad_request
from shared.executors import netguard
from shared.executors.base import StepError
from shared.executors.webhook_call import sign
from shared.log import logger
from shared.settings import named_secret

# Deliveries run after the pass, one by one: at most 5 per evaluation (SQL holds them),
# each within this, so a pass never outlives its function.
DELIVERY_TIMEOUT_S = 5.0
SECRET_ENV = "SUPAFLOW_WEBHOOK_SECRET"  # noqa: S105 - a variable name, not a secret


class AlertRuleRequest(BaseModel):
    """PUT /alert-rules/{ruleId}: a rule's threshold, window, minimum volume, whether it
    is on, and where its firings and resolutions go (null: recorded only)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    kind: str
    description: str | None = Field(default=None, max_length=500)
    threshold: float = Field(ge=0, le=1e9)
    window_s: int = Field(ge=60, le=86400)
    min_volume: int = Field(default=1, ge=0, le=1_000_000)
    enabled: bool = True
    webhook_url: str | None = Field(default=None, max_length=2000)


def put_rule(caller: Caller, rule_id: str, body: dict[str, Any]) -> dict[str, Any]:
    try:
        req = AlertRuleRequest.model_validate(body)
    except ValidationError as exc:
        raise bad_request(first_problem(exc)) from exc
    if req.webhook_url is not None:
        try:
            netguard.check_url(req.webhook_url)
        except StepError as exc:
            raise bad_request(f"webhook_url: {exc.message}") from exc
        if urlsplit(req.webhook_url).scheme not in ("http", "https"):
            raise bad_request("webhook_url: an http or https URL")
    return db.obj(db.rpc("put_alert_rule", {
        "p_rule_id": rule_id, "p_kind": req.kind, "p_description": req.description,
        "p_threshold": req.threshold, "p_window_s": req.window_s, "p_min_volume": req.min_volume,
        "p_enabled": req.enabled, "p_webhook_url": req.webhook_url, "p_claims": caller.claims,
    }))


def list_rules(caller: Caller) -> dict[str, Any]:
    return {"rules": db.rows(db.rpc("list_alert_rules", {"p_claims": caller.claims}))}


def list_alerts(caller: Caller, query: dict[str, str]) -> dict[str, Any]:
    if set(query) - {"status"} or query.get("status", "firing") not in ("firing", "all"):
        raise bad_request("query: only status=firing (the default) or status=all")
    return {"alerts": db.rows(db.rpc("list_alerts", {
        "p_claims": caller.claims, "p_all": query.get("status") == "all"}))}


def _deliver(alert: dict[str, Any]) -> bool:
    secret = named_secret(SECRET_ENV)
    if not secret:  # an unsigned alert could be forged by anyone: never send one
        logger.error("alert not delivered: SUPAFLOW_WEBHOOK_SECRET is not set",
                     extra={"alert_id": alert["alert_id"]})
        return False
    body = json.dumps(alert, separators=(",", ":"), sort_keys=True, default=str).encode()
    timestamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", "X-Supaflow-Timestamp": timestamp,
               "X-Supaflow-Signature": sign(secret, timestamp, body),
               "Idempotency-Key": f"alert:{alert['alert_id']}:{alert['status']}"}
    try:
        with netguard.guarded_client(DELIVERY_TIMEOUT_S, ()) as client:
            request = netguard.build_request(client, "POST", alert["webhook_url"], content=body,
                                             headers=headers)
            response = netguard.send_checked(client, request, follow_redirects=False)
            response.close()
    except StepError as exc:
        logger.warning("alert not delivered", extra={"alert_id": alert["alert_id"],
                                                     "error": exc.message})
        return False
    if not response.is_success:
        logger.warning("alert not delivered", extra={"alert_id": alert["alert_id"],
                                                     "status": response.status_code})
    return response.is_success


def evaluate_and_deliver() -> dict[str, int]:
    """After a scheduled pass: record what fired and resolved (logged once), and deliver
    each alert state not delivered yet to its rule's webhook. Never fails the pass."""
    try:
        return _evaluate_and_deliver()
    except Exception:  # noqa: BLE001 - the pass's own work is done; the next pass tries again
        logger.exception("alerts not evaluated")
        return {"alerts_failed": 1}


def _evaluate_and_deliver() -> dict[str, int]:
    pending = db.rows(db.rpc("evaluate_alerts", {}))
    for alert in pending:
        if alert["new"]:
            logger.warning("alert " + alert["status"], extra={
                k: alert[k] for k in ("alert_id", "rule_id", "subject", "value", "threshold")})
    delivered = [{"alert_id": a["alert_id"], "status": a["status"]} for a in pending
                 if a["webhook_url"] and _deliver({k: v for k, v in a.items() if k != "new"})]
    if delivered:
        db.rpc("mark_alerts_delivered", {"p_deliveries": delivered})
    return {"alerts_changed": sum(1 for a in pending if a["new"]),
            "alerts_delivered": len(delivered)}
