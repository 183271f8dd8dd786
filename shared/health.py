"""GET /health: is this deployment able to run jobs? Nothing secret in the answer."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
from postgrest.exceptions import APIError

from shared import db, tls
from shared.log import logger

# The migrations this code needs: the versions of the files in supabase/migrations/
# (tests/test_management.py keeps the two equal; Lambda packages hold no SQL files).
MIGRATIONS = ("20261123000100", "20261123000200", "20261123000300", "20261123000400",
              "20261123000500", "20261123000600", "20261123000700", "20261123000800",
              "20261123000850", "20261123000900")
# A health check answers within seconds, whatever hangs behind it.
TIMEOUT_S = 3.0
# pg_cron calls the orchestrator every minute; a pass older than this means it does not.
MAX_PASS_AGE_S = 300.0


def _age_s(report: dict[str, Any]) -> float | None:
    if report.get("pass_alive"):
        return 0.0
    ended = report.get("last_pass_ended_at")
    if not ended:
        return None
    return (datetime.fromisoformat(report["now"]) - datetime.fromisoformat(ended)).total_seconds()


def check() -> tuple[int, dict[str, Any]]:
    """200 when every check holds, 503 naming the ones that do not."""
    try:
        params: dict[str, Any] = {"p_migrations": list(MIGRATIONS)}
        with httpx.Client(timeout=TIMEOUT_S, verify=tls.context()) as http:
            report = db.obj(db.as_service(http).rpc("health", params).execute().data)
    except (APIError, httpx.HTTPError, db.UndecodableResponse) as exc:
        logger.warning("health: database unreachable", extra={"error": repr(exc)[:300]})
        return 503, {"status": "unhealthy", "checks": {
            "database": {"ok": False, "detail": "the database API is unreachable"}}}
    age = _age_s(report)
    checks: dict[str, dict[str, Any]] = {
        "database": {"ok": True},
        "migrations": {"ok": not report.get("missing_migrations"),
                       "missing": report.get("missing_migrations")},
        "cron": {"ok": bool(report.get("cron_scheduled")),
                 "detail": "pg_cron job supaflow-orchestrator"},
        # No pass yet is not a failure: a new deployment's first comes within a minute.
        "orchestrator": {"ok": age is None or age <= MAX_PASS_AGE_S,
                         "last_pass_age_s": None if age is None else round(age, 1)},
    }
    healthy = all(c["ok"] for c in checks.values())
    return (200 if healthy else 503), {"status": "ok" if healthy else "unhealthy",
                                       "checks": checks}
