"""Starting workflows from row changes: attach a workflow to a table (a database trigger
that starts a job in the row change's transaction), detach it, list them. Installing SQL
into the project's tables is the service role's alone; the SQL functions (attach_trigger,
detach_trigger, list_triggers) check everything before installing anything."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from shared import db
from shared.api import first_problem
from shared.auth import Caller
from shared.errors import bad_request
from supaflow_models.requests import TriggerRequest


def attach(caller: Caller, trigger_id: str, body: dict[str, Any]) -> dict[str, Any]:
    try:
        req = TriggerRequest.model_validate(body)
    except ValidationError as exc:
        raise bad_request(first_problem(exc)) from exc
    return db.obj(db.rpc("attach_trigger", {
        "p_trigger_id": trigger_id, "p_workflow_id": req.workflow_id, "p_table": req.table,
        "p_events": [e.upper() for e in req.events], "p_condition": req.condition,
        "p_input_mapping": req.input_mapping, "p_owner_column": req.owner_column,
        "p_claims": caller.claims, "p_start_at_column": req.start_at_column,
        "p_start_offset_s": req.start_offset_s,
    }))


def detach(caller: Caller, trigger_id: str) -> dict[str, Any]:
    return db.obj(db.rpc("detach_trigger", {"p_trigger_id": trigger_id, "p_claims": caller.claims}))


def list_triggers(caller: Caller, query: dict[str, str]) -> dict[str, Any]:
    if query:
        raise bad_request(f"unknown query parameter(s): {', '.join(sorted(query))}")
    return {"triggers": db.rows(db.rpc("list_triggers", {"p_claims": caller.claims}))}
