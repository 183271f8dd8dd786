"""Reading jobs (one, a page of them, a job's events) as the caller, so RLS decides what
they see; cancelling and retrying one, as the service role with the caller's claims, so
the same SQL rules decide (the job's owner, or an admin of its tenant)."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime
from typing import Any

from postgrest.exceptions import APIError

from shared import db
from shared.auth import Caller
from shared.errors import bad_request, not_found

JOB_STATUSES = ("pending", "running", "completed", "failed", "awaiting_retry", "cancelled")
JOB_COLUMNS = (
    "id,workflow_id,workflow_version,status,current_step_id,input_data,step_data,final_result,"
    "created_at,started_at,last_updated_at,completed_at,error_message,retry_count,max_retries,"
    "next_retry_at,state_history,idempotency_key,user_id,tenant_id,origin"
)
STEP_COLUMNS = (
    "step_id,transformer_id,depends_on,status,attempt,max_attempts,next_attempt_at,started_at,"
    "completed_at,error,error_type"
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


def get(caller: Caller, job_id: str) -> dict[str, Any]:
    """A job the caller may not see is indistinguishable from a missing one: RLS filters it."""
    job_id = parse_job_id(job_id)
    try:
        rows = db.rows(
            db.as_caller(caller).table("jobs")
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


LIST_FILTERS = ("status", "workflow_id", "created_after", "created_before", "scope", "origin",
                "limit", "cursor")
ORIGINS = ("api", "sql", "trigger", "schedule", "webhook")
SCOPES = ("own", "tenant")


def _timestamp(raw: str, name: str) -> str:
    try:
        value = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise bad_request(f"{name} must be an ISO 8601 timestamp with a time zone") from exc
    if value.tzinfo is None:
        raise bad_request(f"{name} must be an ISO 8601 timestamp with a time zone")
    return value.isoformat()


def list_jobs(caller: Caller, query: dict[str, str]) -> dict[str, Any]:
    """Newest first, keyset-paginated on (created_at, id): stable under concurrent inserts.
    A user lists their own jobs; `scope=tenant` lists all the caller may see (an admin:
    their tenant's jobs; the service role: everyone's, its only scope)."""
    unknown = set(query) - set(LIST_FILTERS)
    if unknown:
        raise bad_request(f"unknown query parameter(s): {', '.join(sorted(unknown))}")
    limit = _limit(query.get("limit"))
    scope = query.get("scope", "own")
    if scope not in SCOPES:
        raise bad_request(f"scope must be one of {', '.join(SCOPES)}")
    builder = db.as_caller(caller).table("jobs").select(JOB_COLUMNS)
    if caller.user and scope == "own":
        builder = builder.eq("user_id", caller.user.id)
    if (status := query.get("status")) is not None:
        if status not in JOB_STATUSES:
            raise bad_request(f"status must be one of {', '.join(JOB_STATUSES)}")
        builder = builder.eq("status", status)
    if (workflow_id := query.get("workflow_id")) is not None:
        builder = builder.eq("workflow_id", db.filter_value(workflow_id, "workflow_id"))
    if (origin := query.get("origin")) is not None:
        if origin not in ORIGINS:
            raise bad_request(f"origin must be one of {', '.join(ORIGINS)}")
        builder = builder.eq("origin", origin)
    if (after := query.get("created_after")) is not None:
        builder = builder.gte("created_at", _timestamp(after, "created_after"))
    if (before := query.get("created_before")) is not None:
        builder = builder.lt("created_at", _timestamp(before, "created_before"))
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


def cancel(caller: Caller, job_id: str) -> dict[str, Any]:
    """Cancelling a finished job changes nothing and says so (`cancelled: false`)."""
    params = {"p_job_id": parse_job_id(job_id), "p_claims": caller.claims}
    return db.obj(db.rpc("cancel_job", params))


def retry(caller: Caller, job_id: str) -> dict[str, Any]:
    """A failed or cancelled job runs again from its unfinished steps (retry_job); the
    reply's `kick` says whether an orchestrator pass must be started to find them."""
    params = {"p_job_id": parse_job_id(job_id), "p_claims": caller.claims}
    return db.obj(db.rpc("retry_job", params))


MAX_SEQ = 2**31 - 1  # job_events.seq is an integer
EVENT_COLUMNS = "seq,event_type,step_id,attempt,from_status,to_status,detail,created_at"


def _seq(raw: str | None) -> int:
    if raw is None:
        return 0
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 10 or int(raw) > MAX_SEQ:
        raise bad_request(f"after must be an integer from 0 to {MAX_SEQ} (an event's seq)")
    return int(raw)


def events(caller: Caller, job_id: str, query: dict[str, str]) -> dict[str, Any]:
    """A job's event log in order, a page at a time: events with seq > `after`. Each
    page's `next_after` is the `after` of the next (null on the last page)."""
    unknown = set(query) - {"after", "limit"}
    if unknown:
        raise bad_request(f"unknown query parameter(s): {', '.join(sorted(unknown))}")
    job_id = parse_job_id(job_id)
    after, limit = _seq(query.get("after")), _limit(query.get("limit"))
    client = db.as_caller(caller)
    try:
        if not db.rows(client.table("jobs").select("id").eq("id", job_id).execute().data):
            raise not_found(f"job {job_id} not found")
        rows = db.rows(
            client.table("job_events").select(EVENT_COLUMNS).eq("job_id", job_id)
            .gt("seq", after).order("seq").limit(limit + 1).execute().data
        )
    except APIError as exc:
        raise db.api_error(exc) from exc
    page = rows[:limit]
    return {"job_id": job_id, "events": page,
            "next_after": page[-1]["seq"] if len(rows) > limit else None}


def stats(caller: Caller) -> dict[str, Any]:
    """GET /stats: the dashboard's overview for the caller (SQL dashboard_stats decides
    whose jobs: everyone's for operators, the tenant's for its admins, else their own)."""
    return db.obj(db.rpc("dashboard_stats", {
        "p_claims": caller.claims, "p_user_id": caller.user.id if caller.user else None}))
