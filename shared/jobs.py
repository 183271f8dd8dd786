"""Reading jobs (one, or a page of them), always as the calling user so RLS applies;
and cancelling one, as the service role on behalf of its verified owner."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime
from typing import Any

from postgrest.exceptions import APIError

from shared import db
from shared.auth import User
from shared.errors import bad_request, not_found

JOB_STATUSES = ("pending", "running", "completed", "failed", "awaiting_retry", "cancelled")
JOB_COLUMNS = (
    "id,workflow_id,workflow_version,status,current_step_id,input_data,step_data,final_result,"
    "created_at,started_at,last_updated_at,completed_at,error_message,retry_count,max_retries,"
    "next_retry_at,state_history,idempotency_key"
)
STEP_COLUMNS = (
    "step_id,transformer_id,status,attempt,max_attempts,next_attempt_at,started_at,completed_at,error"
)
DEFAULT_LIMIT, MAX_LIMIT = 50, 200


def _public(job: dict[str, Any]) -> dict[str, Any]:
    out = {"job_id": job["id"], **{k: v for k, v in job.items() if k not in ("id", "job_steps")}}
    if "job_steps" in job:
        out["steps"] = sorted(job["job_steps"], key=lambda s: (s["started_at"] or "~", s["step_id"]))
    return out


def parse_job_id(raw: str) -> str:
    try:
        return str(uuid.UUID(raw))
    except ValueError as exc:
        raise bad_request(f"job id {raw!r} is not a UUID") from exc


def get(user: User, job_id: str) -> dict[str, Any]:
    """Another user's job is indistinguishable from a missing one: RLS filters it out."""
    job_id = parse_job_id(job_id)
    try:
        rows = db.rows(
            db.as_user(user.token).table("jobs")
            .select(f"{JOB_COLUMNS},job_steps({STEP_COLUMNS})").eq("id", job_id).execute().data
        )
    except APIError as exc:
        raise db.api_error(exc) from exc
    if not rows:
        raise not_found(f"job {job_id} not found")
    return _public(rows[0])


def _encode_cursor(job: dict[str, Any]) -> str:
    raw = json.dumps([job["created_at"], job["id"]]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


MAX_CURSOR_CHARS = 200  # ours are ~100: [timestamp, uuid] in base64


def _decode_cursor(cursor: str) -> tuple[str, str]:
    """Checked here, so that Postgres only ever sees a timestamp and a UUID it can read."""
    if len(cursor) > MAX_CURSOR_CHARS:
        raise bad_request("cursor is not valid")
    try:
        created_at, job_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        timestamp = datetime.fromisoformat(str(created_at))
        if timestamp.tzinfo is None:
            raise ValueError("cursor timestamp without a time zone")
        return timestamp.isoformat(), str(uuid.UUID(str(job_id)))
    except (ValueError, TypeError, binascii.Error) as exc:
        raise bad_request("cursor is not valid") from exc


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    # isascii: "²" is a digit to str.isdigit() but not to int().
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise bad_request(f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def list_jobs(user: User, query: dict[str, str]) -> dict[str, Any]:
    """Newest first, keyset-paginated on (created_at, id): stable under concurrent inserts."""
    unknown = set(query) - {"status", "workflow_id", "limit", "cursor"}
    if unknown:
        raise bad_request(f"unknown query parameter(s): {', '.join(sorted(unknown))}")
    limit = _limit(query.get("limit"))
    builder = db.as_user(user.token).table("jobs").select(JOB_COLUMNS)
    if (status := query.get("status")) is not None:
        if status not in JOB_STATUSES:
            raise bad_request(f"status must be one of {', '.join(JOB_STATUSES)}")
        builder = builder.eq("status", status)
    if (workflow_id := query.get("workflow_id")) is not None:
        builder = builder.eq("workflow_id", db.filter_value(workflow_id, "workflow_id"))
    if (cursor := query.get("cursor")) is not None:
        created_at, last_id = _decode_cursor(cursor)
        builder = builder.or_(
            f'created_at.lt."{created_at}",and(created_at.eq."{created_at}",id.lt.{last_id})'
        )
    try:
        rows = db.rows(
            builder.order("created_at", desc=True).order("id", desc=True).limit(limit + 1)
            .execute().data
        )
    except APIError as exc:
        raise db.api_error(exc) from exc
    page = rows[:limit]
    return {
        "jobs": [_public(r) for r in page],
        "next_cursor": _encode_cursor(page[-1]) if len(rows) > limit else None,
    }


def cancel(user: User, job_id: str) -> dict[str, Any]:
    """Only the owner may cancel; anyone else's job is as missing as an unknown one.
    Cancelling a finished job changes nothing and says so (`cancelled: false`)."""
    params: dict[str, Any] = {"p_job_id": parse_job_id(job_id), "p_user_id": user.id}
    try:
        return db.obj(db.as_service().rpc("cancel_job", params).execute().data)
    except APIError as exc:
        raise db.api_error(exc) from exc
