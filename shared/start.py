"""Starting a job: validate the request and its input against the workflow's current
version, then one SQL transaction (start_job), called as the service role for the
user the function verified. Users cannot call start_job themselves.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Self

from postgrest.exceptions import APIError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared import db
from shared.api import first_problem
from shared.auth import User
from shared.errors import ApiError, bad_request, not_found
from supaflow_models.definitions import (
    MAX_DELAY_S,
    DefinitionError,
    InputError,
    WorkflowDefinition,
    parse_definition,
    validate_input,
)

# A start that keeps meeting a newer version (publishes racing it) gives up after this.
MAX_VERSION_RETRIES = 3


class StartRequest(BaseModel):
    """A start; `start_at` (ISO 8601 with a time zone) or `delay_s` puts its first steps
    off (how far ahead is start_job's rule: 30 days)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    workflow_id: str = Field(min_length=1, max_length=128)
    input_data: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=255)
    start_at: str | None = Field(default=None, max_length=64)
    delay_s: float | None = Field(default=None, ge=0, le=MAX_DELAY_S)

    @model_validator(mode="after")
    def _one_way_to_wait(self) -> Self:
        if self.start_at is not None and self.delay_s is not None:
            raise ValueError("give start_at or delay_s, not both")
        if self.start_at is not None:
            try:
                when = datetime.fromisoformat(self.start_at)
            except ValueError:
                raise ValueError("start_at: must be an ISO 8601 timestamp") from None
            if when.tzinfo is None:
                raise ValueError("start_at: must have a time zone")
        return self

    def when(self) -> str | None:
        """When the job's first steps may run, for start_job (null: now)."""
        if self.delay_s is not None:
            return (datetime.now(UTC) + timedelta(seconds=self.delay_s)).isoformat()
        return self.start_at


# The last version each workflow was started at, in this process: a guess that
# start_job confirms (it refuses any version but the current one and names it).
_latest_version: dict[str, int] = {}


def _current_version(user: User, workflow_id: str) -> int:
    """The version a start runs now; a 404 when the workflow is missing, inactive, or
    another tenant's (read as the user: RLS decides, and start_job checks again)."""
    _latest_version.pop(workflow_id, None)
    rows = db.rows(
        db.as_user(user.token).table("workflows").select("version")
        .eq("id", db.filter_value(workflow_id, "workflow_id")).eq("is_active", True)
        .limit(1).execute().data
    )
    if not rows:
        raise not_found(f"workflow {workflow_id!r} not found")
    return int(rows[0]["version"])


@lru_cache(maxsize=256)
def _definition(workflow_id: str, version: int) -> WorkflowDefinition:
    """A published version never changes, so each is fetched and parsed once per process."""
    rows = db.rows(
        db.as_service().table("workflow_versions").select("definition")
        .eq("workflow_id", workflow_id).eq("version", version).limit(1).execute().data
    )
    if not rows:
        raise not_found(f"workflow {workflow_id!r} not found")
    return parse_definition(rows[0]["definition"])


def definition(workflow_id: str, version: int) -> WorkflowDefinition:
    try:
        try:
            return _definition(workflow_id, version)
        except APIError as exc:
            raise db.api_error(exc) from exc
    except (DefinitionError, db.UndecodableResponse) as exc:
        raise ApiError(422, "invalid_workflow", f"stored workflow is invalid: {exc}") from exc


def _start_job_rpc(user: User, req: StartRequest, version: int | None) -> dict[str, Any]:
    params: dict[str, Any] = {
        "p_user_id": user.id,
        "p_workflow_id": req.workflow_id,
        "p_workflow_version": version,
        "p_input": req.input_data,
        "p_idempotency_key": req.idempotency_key,
        "p_claims": user.claims,
        "p_start_at": req.when(),
    }
    return db.obj(db.as_service().rpc("start_job", params).execute().data)


def _checked_version(user: User, req: StartRequest) -> int:
    """The version a start would run, with the input validated against it. A refusal is
    answered from the current state, not from a version this process remembers."""
    try:
        version = _latest_version.get(req.workflow_id)
        current = version is None
        if version is None:
            version = _current_version(user, req.workflow_id)
        while True:
            try:
                validate_input(definition(req.workflow_id, version), req.input_data)
                return version
            except InputError as exc:
                if current:
                    raise ApiError(400, "invalid_input", str(exc)) from exc
                version = _latest_version[req.workflow_id] = _current_version(user, req.workflow_id)
                current = True
    except APIError as exc:
        raise db.api_error(exc) from exc


def _start(user: User, req: StartRequest) -> tuple[int, dict[str, Any]]:
    version = _checked_version(user, req)
    try:
        for _ in range(MAX_VERSION_RETRIES):
            try:
                result = _start_job_rpc(user, req, version)
            except APIError as exc:
                if exc.code == "PT409" and exc.details == "workflow_changed" and exc.hint:
                    version = _latest_version[req.workflow_id] = int(exc.hint)
                    validate_input(definition(req.workflow_id, version), req.input_data)
                    continue
                if exc.code == "PT404":  # deactivated or gone
                    _latest_version.pop(req.workflow_id, None)
                raise
            _latest_version[req.workflow_id] = version
            existing = bool(result.pop("existing", False))
            return (200 if existing else 202), result
    except InputError as exc:
        raise ApiError(400, "invalid_input", str(exc)) from exc
    except APIError as exc:
        raise db.api_error(exc) from exc
    raise ApiError(409, "workflow_changed", f"workflow {req.workflow_id!r} kept changing; retry")


def _replay(user: User, req: StartRequest) -> tuple[int, dict[str, Any]] | None:
    """The job an earlier start with this key created, if there is one. start_job with no
    version creates nothing: it answers an existing key (or its conflict) and refuses the
    rest, so the idempotency rule stays in SQL."""
    try:
        result = _start_job_rpc(user, req, None)
    except APIError as exc:
        if exc.code == "PT409" and exc.details == "idempotency_conflict":
            raise db.api_error(exc) from exc
        return None
    return (200, result) if result.pop("existing", False) else None


def start_job(user: User, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Validate, then create the job in one SQL transaction. Returns (status, body).

    A retried start (same idempotency key) gets its job back even when the workflow has
    since changed its input_schema or been deactivated: the replay is checked before
    such a refusal is answered."""
    try:
        req = StartRequest.model_validate(body)
    except ValidationError as exc:
        raise bad_request(first_problem(exc)) from exc
    try:
        return _start(user, req)
    except ApiError as err:
        if req.idempotency_key is None or err.status not in (400, 404, 422):
            raise
        replayed = _replay(user, req)
        if replayed is None:
            raise
        return replayed


# Starts one batch request may carry (POST /workflows/start with {"jobs": [...]}).
MAX_BATCH_STARTS = 1000


class BatchStartRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    jobs: list[StartRequest] = Field(min_length=1, max_length=MAX_BATCH_STARTS)


def _refused(err: ApiError) -> dict[str, Any]:
    return {"outcome": "refused",
            "error": {"status": err.status, "code": err.code, "message": err.message}}


def start_jobs(user: User, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Many starts in one SQL transaction (start_jobs), each validated like one start:
    results in the order given, each `created`, `existing` or `refused`. Returns the
    response body and whether to kick the orchestrator."""
    try:
        batch = BatchStartRequest.model_validate(body)
    except ValidationError as exc:
        raise bad_request(first_problem(exc)) from exc
    refusals: dict[int, ApiError] = {}
    items: list[dict[str, Any]] = []
    for index, req in enumerate(batch.jobs):
        version: int | None
        try:
            version = _checked_version(user, req)
        except ApiError as err:
            if err.status >= 500:
                raise
            refusals[index] = err
            if req.idempotency_key is None:
                continue
            version = None  # only a replay of an earlier start may still answer
        items.append({"index": index, "workflow_id": req.workflow_id, "workflow_version": version,
                      "input": req.input_data, "idempotency_key": req.idempotency_key,
                      "start_at": req.when()})
    params: dict[str, Any] = {"p_user_id": user.id, "p_jobs": items, "p_claims": user.claims}
    try:
        rows = db.rows(db.as_service().rpc("start_jobs", params).execute().data) if items else []
    except APIError as exc:
        raise db.api_error(exc) from exc
    by_index = {index: _refused(err) for index, err in refusals.items()}
    kick = False
    for row in rows:
        index, result = int(row["index"]), db.obj(row["result"])
        if "error" in result:
            if index not in refusals:
                error = result["error"]
                by_index[index] = _refused(ApiError(int(error["status"]),
                                                    str(error.get("code") or "refused"),
                                                    str(error["message"])))
            continue
        wants_kick = bool(result.pop("kick", False))
        kick = kick or wants_kick
        outcome = "existing" if result.pop("existing", False) else "created"
        by_index[index] = {"outcome": outcome, **result}
    return {"results": [by_index[i] for i in range(len(batch.jobs))]}, kick
