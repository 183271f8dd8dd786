"""Managing workflows (DESIGN.md section 10): drafts validated by the definition model,
published as versions, deactivated. Who may do what is decided in SQL from the caller's
claims (put_draft, publish_workflow, deactivate_workflow, describe_workflows)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared import db
from shared.api import Request, first_problem
from shared.auth import Caller
from shared.errors import ApiError, bad_request, not_found
from supaflow_models.definitions import DefinitionError, normalise
from supaflow_models.requests import DraftRequest


def put_draft(caller: Caller, workflow_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """Validate the definition (400 naming each step and field) and store it, normalised,
    as the workflow's draft; starts never see a draft."""
    try:
        req = DraftRequest.model_validate(body)
    except ValidationError as exc:
        raise bad_request(first_problem(exc)) from exc
    try:
        definition = normalise(req.definition)
    except DefinitionError as exc:
        raise ApiError(400, "invalid_definition",
                       "; ".join(f"definition.{p}" for p in exc.problems)) from exc
    return db.obj(db.rpc("put_draft", {
        "p_workflow_id": workflow_id, "p_description": req.description,
        "p_definition": definition, "p_tenant_id": req.tenant_id, "p_claims": caller.claims,
    }))


MAX_INT = 2**31 - 1  # versions and revisions are SQL integers


class PublishRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    expected_version: int | None = Field(default=None, ge=0, le=MAX_INT)
    draft_revision: int | None = Field(default=None, ge=1, le=MAX_INT)


def _if_match(value: str | None) -> int | None:
    """`If-Match: "3"` (the ETag GET answered) names the version the caller expects."""
    if value is None:
        return None
    tag = value.strip()
    if not re.fullmatch(r'"[0-9]{1,9}"', tag):
        raise bad_request('If-Match must be a version ETag such as "3" (a strong one)')
    tag = tag.strip('"')
    return int(tag)


def publish(caller: Caller, workflow_id: str, request: Request) -> dict[str, Any]:
    """The draft becomes the next version. The expected version (If-Match, or the body's
    expected_version) turns a race with another publish into a 409, and draft_revision
    one with another PUT of the draft."""
    body = request.json_object() if (request.event.body or "").strip() else {}
    try:
        req = PublishRequest.model_validate(body)
    except ValidationError as exc:
        raise bad_request(first_problem(exc)) from exc
    expected = _if_match(request.headers.get("if-match"))
    if expected is not None and req.expected_version not in (None, expected):
        raise bad_request("If-Match and expected_version disagree")
    if expected is None:
        expected = req.expected_version
    return db.obj(db.rpc("publish_workflow", {
        "p_workflow_id": workflow_id, "p_expected_version": expected, "p_claims": caller.claims,
        "p_draft_revision": req.draft_revision,
    }))


def deactivate(caller: Caller, workflow_id: str) -> dict[str, Any]:
    return db.obj(db.rpc("deactivate_workflow",
                         {"p_workflow_id": workflow_id, "p_claims": caller.claims}))


def list_workflows(caller: Caller, query: dict[str, str]) -> dict[str, Any]:
    if query:
        raise bad_request(f"unknown query parameter(s): {', '.join(sorted(query))}")
    return {"workflows": db.rows(db.rpc("describe_workflows", {"p_claims": caller.claims}))}


def get_workflow(caller: Caller, workflow_id: str) -> dict[str, Any]:
    found = db.rows(db.rpc("describe_workflows",
                           {"p_claims": caller.claims, "p_workflow_id": workflow_id}))
    if not found:
        raise not_found(f"workflow {workflow_id!r} not found")
    return found[0]
