"""POST /internal/orchestrator: one pass of recovery, claiming and dispatch.

Called by pg_cron (through pg_net), by start-workflow's kick, or by anyone
holding the internal credential. Any number may run at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

from shared import alerts, api, auth, metrics, orchestrator
from shared.dispatch import KICK_REASON, functions_url
from shared.errors import ApiError
from shared.log import logger
from shared.settings import settings

# Leave this much of the function's timeout for the last answers to arrive.
MARGIN_S = 15.0


def _budget_s(context: Any) -> float:
    configured = settings().orchestrator_budget_s
    if context is not None and hasattr(context, "get_remaining_time_in_millis"):
        remaining = float(context.get_remaining_time_in_millis()) / 1000
        return max(1.0, min(configured, remaining - MARGIN_S))
    return configured


def _run_pass(event: dict[str, Any], context: Any, reason: str = "schedule") -> dict[str, int]:
    summary = asyncio.run(orchestrator.run_pass(
        functions_url(event), _budget_s(context), kicked=reason == KICK_REASON))
    logger.info("orchestrator pass", extra=summary.as_dict())
    label = ("skipped" if summary.skipped else "kicked" if reason == KICK_REASON
             else "scheduled" if reason in ("cron", "schedule") else "manual")
    metrics.TIMINGS.record("pass", label, summary.duration_ms / 1000)
    if label in ("scheduled", "manual"):  # not on a kick: starts never wait for alerts
        return {**summary.as_dict(), **alerts.evaluate_and_deliver()}
    return summary.as_dict()


def orchestrate(request: api.Request) -> api.Reply:
    auth.verify_internal(request.headers)
    try:
        reason = str(request.json_object().get("reason", "manual"))
    except ApiError as err:
        if err.status == 413:
            raise
        reason = "manual"  # the body is optional
    return api.Reply(200, _run_pass(request.raw_event, request.context, reason))


_http_handler = api.handler_for(orchestrate)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """HTTP calls (pg_cron, kicks) go through the API; an EventBridge schedule calls directly."""
    if event.get("source") == "aws.events":
        return _run_pass({}, context)
    return _http_handler(event, context)
