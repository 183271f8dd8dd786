"""Cron-scheduled workflows: each enabled schedule is a pg_cron job that starts the
workflow (SQL put_schedule, delete_schedule, list_schedules, run_schedule). They install
cron jobs, so they are the service role's."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import ValidationError

from shared import db
from shared.api import first_problem
from shared.auth import Caller
from shared.errors import bad_request
from supaflow_models.requests import ScheduleRequest


def put(caller: Caller, schedule_id: str, body: dict[str, Any]) -> dict[str, Any]:
    try:
        req = ScheduleRequest.model_validate(body)
        owner = None if req.owner is None else str(uuid.UUID(req.owner))
    except ValidationError as exc:
        raise bad_request(first_problem(exc)) from exc
    except ValueError as exc:
        raise bad_request("owner: must be a user id (a UUID)") from exc
    return db.obj(db.rpc("put_schedule", {
        "p_schedule_id": schedule_id, "p_workflow_id": req.workflow_id, "p_cron": req.cron,
        "p_timezone": req.timezone, "p_input": req.input, "p_owner": owner,
        "p_enabled": req.enabled, "p_overlap": req.overlap, "p_claims": caller.claims,
    }))


def delete(caller: Caller, schedule_id: str) -> dict[str, Any]:
    return db.obj(db.rpc("delete_schedule", {"p_schedule_id": schedule_id,
                                             "p_claims": caller.claims}))


def list_schedules(caller: Caller, query: dict[str, str]) -> dict[str, Any]:
    if query:
        raise bad_request(f"unknown query parameter(s): {', '.join(sorted(query))}")
    return {"schedules": db.rows(db.rpc("list_schedules", {"p_claims": caller.claims}))}
