"""Starting a job: validate the request and the input, then one SQL transaction (start_job)."""

from __future__ import annotations

from typing import Any

from postgrest.exceptions import APIError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared import db
from shared.auth import User
from shared.definitions import DefinitionError, InputError, parse_definition, validate_input
from shared.errors import ApiError, bad_request, not_found


class StartRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    workflow_id: str = Field(min_length=1, max_length=128)
    input_data: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=255)


def _first_problem(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "body"
    return f"{where}: {err['msg']}"


def start_job(user: User, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Validate, then create the job in one SQL transaction. Returns (status, body)."""
    try:
        req = StartRequest.model_validate(body)
    except ValidationError as exc:
        raise bad_request(_first_problem(exc)) from exc
    client = db.as_user(user.token)
    try:
        rows = db.rows(
            client.table("workflows").select("version,definition")
            .eq("id", req.workflow_id).eq("is_active", True).limit(1).execute().data
        )
    except APIError as exc:
        raise db.api_error(exc) from exc
    if not rows:
        raise not_found(f"workflow {req.workflow_id!r} not found")
    try:
        definition = parse_definition(rows[0]["definition"])
        validate_input(definition, req.input_data)
    except InputError as exc:
        raise ApiError(400, "invalid_input", str(exc)) from exc
    except DefinitionError as exc:
        raise ApiError(422, "invalid_workflow", f"stored workflow is invalid: {exc}") from exc
    try:
        params: dict[str, Any] = {
            "p_workflow_id": req.workflow_id,
            "p_workflow_version": rows[0]["version"],
            "p_input": req.input_data,
            "p_idempotency_key": req.idempotency_key,
        }
        result = db.obj(client.rpc("start_job", params).execute().data)
    except APIError as exc:
        raise db.api_error(exc) from exc
    existing = bool(result.pop("existing", False))
    return (200 if existing else 202), result
