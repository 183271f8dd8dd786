"""The alert routes (operators: the service-role key or an admin of no tenant): what fires
now, and the rules, editable."""

from __future__ import annotations

from shared import alerts, api, auth
from shared.log import logger


def list_alerts(request: api.Request) -> api.Reply:
    caller = auth.verify_caller(request.headers)
    return api.Reply(200, alerts.list_alerts(caller, request.query))


def list_rules(request: api.Request) -> api.Reply:
    caller = auth.verify_caller(request.headers)
    return api.Reply(200, alerts.list_rules(caller))


def put_rule(request: api.Request) -> api.Reply:
    caller = auth.verify_caller(request.headers)
    saved = alerts.put_rule(caller, request.path_param("ruleId"), request.json_object())
    logger.info("alert rule saved", extra={"rule_id": saved["rule_id"], "by": caller.actor})
    return api.Reply(200, saved)


handler = api.handler_for_routes({
    "GET /alerts": list_alerts,
    "GET /alert-rules": list_rules,
    "PUT /alert-rules/{ruleId}": put_rule,
})
