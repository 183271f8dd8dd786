"""The HTTP layer of every function: API Gateway v2 events in, JSON responses out.

Powertools gives us the event's data class (and `shared.log` the JSON logger). Its router is
not used: it keeps the current event in class attributes (`BaseRouter.current_event`),
so two invocations running at once in one process (as the local gateway runs
them, in threads) would read each other's requests. Each function serves exactly
one route, which API Gateway (or the gateway) has already matched, so a handler
is simply `request -> (status, body)`. Errors are always
`{"error": {"code", "message"}}` with the right status, never a trace.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2
from pydantic import ValidationError

from shared import metrics
from shared.errors import ApiError, unavailable
from shared.log import logger
from shared.settings import settings

# How deep a request body may nest. This protects the functions' own parsing and
# re-encoding (Python's JSON code recurses); what may be *stored* is a tighter,
# separate rule owned by SQL (workflow.value_problem: 64 levels).
MAX_BODY_DEPTH = 128


@dataclass
class Reply:
    """A JSON answer; or, with `content_type`, a text one (`body` a str or bytes)."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None


@dataclass(frozen=True)
class Request:
    """One invocation's request; never shared between invocations."""

    event: APIGatewayProxyEventV2
    context: Any

    @property
    def raw_event(self) -> dict[str, Any]:
        return dict(self.event.raw_event)

    @property
    def headers(self) -> dict[str, str]:
        return {k.lower(): v for k, v in (self.event.headers or {}).items()}

    @property
    def query(self) -> dict[str, str]:
        return dict(self.event.query_string_parameters or {})

    def path_param(self, name: str) -> str:
        """A path parameter; one Postgres text cannot hold (NUL) names nothing: a 400."""
        value = str((self.event.path_parameters or {}).get(name, ""))
        if "\x00" in value:
            raise ApiError(400, "bad_request", f"{name}: may not contain NUL (\\u0000)")
        return value

    def body(self, limit: int | None = None) -> bytes:
        """The request body, size-capped (by default at the user routes' cap) before
        anything parses it."""
        raw = self.event.body or ""
        limit = settings().max_body_bytes if limit is None else limit
        if len(raw) > limit * 4 // 3 + 4:
            raise ApiError(413, "payload_too_large", f"request body exceeds {limit} bytes")
        try:
            data = base64.b64decode(raw, validate=True) if self.event.is_base64_encoded else raw.encode()
        except binascii.Error as exc:
            raise ApiError(400, "bad_request", "body is not valid base64") from exc
        if len(data) > limit:
            raise ApiError(413, "payload_too_large", f"request body exceeds {limit} bytes")
        return data

    def json_object(self, max_bytes: int | None = None) -> dict[str, Any]:
        parsed = parse_json(self.body(max_bytes))
        if not isinstance(parsed, dict):
            raise ApiError(400, "invalid_json", "request body must be a JSON object")
        return parsed


def parse_json(data: bytes) -> Any:
    """A request body as JSON that Postgres can store, or a 400 saying why not."""
    if not data.strip():
        raise ApiError(400, "invalid_json", "request body must be JSON, and it is empty")
    try:
        parsed = json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError as exc:
        raise _too_deep() from exc
    except (ValueError, UnicodeError) as exc:
        raise ApiError(400, "invalid_json", f"malformed JSON: {exc}") from exc
    try:
        _check_storable(parsed)
    except ValueError as exc:
        raise ApiError(400, "invalid_json", f"malformed JSON: {exc}") from exc
    return parsed


def first_problem(exc: ValidationError) -> str:
    """A request model's first complaint, naming the field: `definition: Field required`."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "body"
    return f"{where}: {err['msg']}"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def _too_deep() -> ApiError:
    return ApiError(400, "invalid_json", f"request body is nested more than {MAX_BODY_DEPTH} levels deep")


def _check_storable(value: Any) -> None:
    """What Postgres's jsonb cannot hold (NUL characters, lone UTF-16 surrogates), and
    bodies nested deeper than MAX_BODY_DEPTH. Iterative: deep input cannot blow the stack."""
    todo: list[tuple[Any, int]] = [(value, 0)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise ValueError("strings may not contain NUL (\\u0000)")
            item.encode("utf-8")  # raises UnicodeEncodeError on a lone surrogate
        elif isinstance(item, dict | list):
            if depth == MAX_BODY_DEPTH:
                raise _too_deep()
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            todo.extend((child, depth + 1) for child in children)


Endpoint = Callable[[Request], Reply]
Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


def _response(reply: Reply) -> dict[str, Any]:
    if reply.content_type is None:
        body, content_type = json.dumps(reply.body, default=str), "application/json"
    else:
        body = reply.body.decode() if isinstance(reply.body, bytes) else str(reply.body)
        content_type = reply.content_type
    return {
        "statusCode": reply.status,
        "headers": {"Content-Type": content_type, **reply.headers},
        "body": body,
        "isBase64Encoded": False,
    }


def error_reply(err: ApiError) -> Reply:
    return Reply(err.status, {"error": {"code": err.code, "message": err.message}}, err.headers)


def handler_for_routes(endpoints: dict[str, Endpoint]) -> Handler:
    """One function serving a few related routes, chosen by the route API Gateway matched
    (its routeKey, e.g. `GET /workflows/{workflowId}`)."""

    def dispatch(request: Request) -> Reply:
        endpoint = endpoints.get(request.event.route_key)
        if endpoint is None:
            raise ApiError(404, "not_found", f"no route {request.event.route_key!r} here")
        return endpoint(request)

    return handler_for(dispatch)


def handler_for(endpoint: Endpoint) -> Handler:
    """The Lambda entry point. Log keys are per thread, so concurrent invocations keep theirs."""

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        request = Request(APIGatewayProxyEventV2(event), context)
        logger.thread_safe_append_keys(
            request_id=request.event.request_context.request_id,
            function_name=getattr(context, "function_name", None),
        )
        started = time.perf_counter()
        response = _answer(endpoint, request)
        route = request.event.raw_event.get("routeKey") or "unrouted"
        metrics.TIMINGS.record("api", f"{route} {response['statusCode']}",
                               time.perf_counter() - started)
        logger.thread_safe_clear_keys()
        return response

    return handler


def _answer(endpoint: Endpoint, request: Request) -> dict[str, Any]:
    try:
        return _response(endpoint(request))
    except ApiError as err:
        logger.info("request refused", extra={"status": err.status, "code": err.code})
        return _response(error_reply(err))
    except httpx.TransportError as exc:
        # The functions' only outbound calls here are to PostgREST (executors
        # handle their own): it is restarting or unreachable.
        logger.warning("backend unreachable", extra={"error": repr(exc)})
        return _response(error_reply(unavailable("the database API")))
    except Exception:  # noqa: BLE001 - the last resort: logged, a 500 without a trace
        logger.exception("unhandled error")
        return _response(error_reply(ApiError(500, "internal", "internal error")))
