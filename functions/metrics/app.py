"""GET /metrics: seed 002's metrics in Prometheus' text format (a scrape target)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST

from shared import api, auth, metrics


def get_metrics(request: api.Request) -> api.Reply:
    if auth.holds_internal(request.headers):
        claims = {"role": auth.SERVICE_ROLE}
    else:
        claims = auth.verify_caller(request.headers).claims
    return api.Reply(200, metrics.prometheus_text(claims), {"Cache-Control": "no-store"},
                     content_type=CONTENT_TYPE_LATEST)


handler = api.handler_for(get_metrics)
