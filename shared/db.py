"""Database access over PostgREST (supabase-py's client), as the user or as the service role.

One pooled HTTP client per process; the per-call clients only carry headers,
so creating one per request costs nothing.
"""

from __future__ import annotations

from functools import cache
from typing import Any, cast

import httpx
from postgrest import AsyncPostgrestClient, SyncPostgrestClient
from postgrest.exceptions import APIError

from shared import tls
from shared.auth import Caller
from shared.errors import ApiError, bad_request, invalid_token, not_found, unavailable
from shared.settings import settings

SCHEMA = "workflow"
# PostgREST's codes for "no database right now": cannot connect, connection lost,
# schema cache not loaded yet, no pool connection in time (HTTP 503/504).
POSTGREST_UNAVAILABLE = ("PGRST000", "PGRST001", "PGRST002", "PGRST003")


@cache
def _http() -> httpx.Client:
    return httpx.Client(
        timeout=httpx.Timeout(30.0, connect=5.0),
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=50),
        verify=tls.context(),
    )


def _headers(authorization: str | None, apikey: str) -> dict[str, str]:
    headers = {"apikey": apikey, "Accept-Profile": SCHEMA, "Content-Profile": SCHEMA}
    if authorization:
        headers["Authorization"] = f"Bearer {authorization}"
    return headers


def _service_headers() -> dict[str, str]:
    """Supabase's `sb_secret_...` keys are not JWTs: they go in apikey only."""
    key = settings().service_role_key
    return _headers(None if key.startswith("sb_") else key, key)


def _client(authorization: str | None, apikey: str) -> SyncPostgrestClient:
    return SyncPostgrestClient(
        settings().rest_url, schema=SCHEMA, headers=_headers(authorization, apikey),
        http_client=_http(),
    )


def as_user(token: str) -> SyncPostgrestClient:
    """The caller's own token: Postgres RLS decides what they see."""
    return _client(token, settings().anon_key)


def as_caller(caller: Caller) -> SyncPostgrestClient:
    """Reads as the caller: a user under RLS, the service role unrestricted."""
    return as_user(caller.user.token) if caller.user else as_service()


def rpc(name: str, params: dict[str, Any]) -> Any:
    """A service-role call of one of our SQL functions, its refusals as ApiErrors."""
    try:
        return as_service().rpc(name, params).execute().data
    except APIError as exc:
        raise api_error(exc) from exc
    except RecursionError as exc:  # an answer nested deeper than the decoder recurses
        raise UndecodableResponse from exc


def as_service(http: httpx.Client | None = None) -> SyncPostgrestClient:
    """The engine's own access, for the executors (over `http`, when a caller needs its
    own timeouts)."""
    return SyncPostgrestClient(
        settings().rest_url, schema=SCHEMA, headers=_service_headers(), http_client=http or _http()
    )


def as_service_async(http: httpx.AsyncClient) -> AsyncPostgrestClient:
    """The orchestrator's access; `http` lives as long as one orchestrator pass."""
    return AsyncPostgrestClient(
        settings().rest_url, schema=SCHEMA, headers=_service_headers(), http_client=http
    )


class UndecodableResponse(ApiError):
    """PostgREST answered something postgrest-py could not decode (JSON nested deeper
    than pydantic's ~250-level limit): it hands back the raw text, or raises an APIError
    whose code is the HTTP success status. Only rows written around the bounds
    (workflow.value_problem) can cause this."""

    def __init__(self) -> None:
        super().__init__(502, "unreadable_data", "stored data is nested too deeply to read")


def filter_value(value: str, what: str) -> str:
    """A value for a PostgREST URL filter: control characters cannot travel in a URL
    (httpx refuses to send them), so they are the caller's 400, not a 503."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise bad_request(f"{what} may not contain control characters")
    return value


def rows(data: Any) -> list[dict[str, Any]]:
    """PostgREST's JSON rows, checked: never a raw string mistaken for rows."""
    if not isinstance(data, list):
        raise UndecodableResponse
    return cast(list[dict[str, Any]], data)


def obj(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise UndecodableResponse
    return cast(dict[str, Any], data)


def api_error(exc: APIError) -> ApiError:
    """PostgREST errors raised on purpose by our SQL (PTxxx) keep their meaning; the
    SQL puts a specific error code, when it has one, in the error's detail."""
    if exc.code in ("PT400", "PT409"):
        status = int(exc.code[2:])
        code = str(exc.details) if exc.details else ("bad_request" if status == 400 else "conflict")
        return ApiError(status, code, str(exc.message))
    if exc.code == "PT429":
        retry_after = exc.hint if exc.hint and str(exc.hint).isdigit() else "1"
        return ApiError(429, "rate_limited", str(exc.message), {"Retry-After": str(retry_after)})
    if exc.code == "PT404":
        return not_found(str(exc.message))
    if exc.code == "23514":
        # A value a table's or domain's check refuses (e.g. a tenant_id with control
        # characters): Postgres names the constraint, which names the field.
        return bad_request(str(exc.message))
    if exc.code in ("PT403", "PT422"):
        status = int(exc.code[2:])
        default = "forbidden" if status == 403 else "unprocessable"
        return ApiError(status, str(exc.details) if exc.details else default, str(exc.message))
    if exc.code in ("PT401", "PGRST301", "PGRST302"):
        return invalid_token(str(exc.message))
    if str(exc.code).isascii() and str(exc.code).isdigit() and 200 <= int(str(exc.code)) < 300:
        # postgrest-py's "JSON could not be generated": a success it failed to decode.
        return UndecodableResponse()
    if exc.code in POSTGREST_UNAVAILABLE:
        return unavailable("the database")
    return ApiError(502, "database_error", "the database refused the request")
