"""The HTTP layer of every function: API Gateway v2 events in, JSON responses out.

Built on Powertools' event handler (routing, v2 parsing, Logger). Errors are
always `{"error": {"code", "message"}}` with the right status, never a trace.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.logging import correlation_paths

from shared.errors import ApiError
from shared.settings import settings

logger = Logger()

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response[str]:
    return Response(status, "application/json", json.dumps(body, default=str), headers or {})


def error_response(err: ApiError) -> Response[str]:
    body = {"error": {"code": err.code, "message": err.message}}
    return json_response(err.status, body, err.headers)


Routes = Callable[[APIGatewayHttpResolver], None]


def create_app(routes: Routes) -> APIGatewayHttpResolver:
    """A resolver with our error handling. One per invocation: Powertools keeps the
    current event on the resolver, so a shared one would mix up concurrent requests
    (the local gateway runs invocations in threads of one process)."""
    app = APIGatewayHttpResolver()
    routes(app)

    @app.exception_handler(ApiError)  # type: ignore[misc]
    def _expected(err: ApiError) -> Response[str]:
        logger.info("request refused", extra={"status": err.status, "code": err.code})
        return error_response(err)

    @app.exception_handler(Exception)  # type: ignore[misc]
    def _unexpected(err: Exception) -> Response[str]:
        logger.exception("unhandled error")
        return error_response(ApiError(500, "internal", "internal error"))

    @app.not_found
    def _no_route(_: Exception) -> Response[str]:
        return error_response(ApiError(404, "not_found", "no such route"))

    return app


def handler_for(routes: Routes) -> Handler:
    """The Lambda entry point: request id as the correlation id of every log line."""

    @logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return create_app(routes).resolve(event, context)

    return handler


def raw_body(app: APIGatewayHttpResolver) -> bytes:
    """The request body, size-capped before anything parses it."""
    event = app.current_event
    body = event.body or ""
    limit = settings().max_body_bytes
    if len(body) > limit * 4 // 3 + 4:
        raise ApiError(413, "payload_too_large", f"request body exceeds {limit} bytes")
    try:
        data = base64.b64decode(body, validate=True) if event.is_base64_encoded else body.encode()
    except binascii.Error as exc:
        raise ApiError(400, "bad_request", "body is not valid base64") from exc
    if len(data) > limit:
        raise ApiError(413, "payload_too_large", f"request body exceeds {limit} bytes")
    return data


def json_object(app: APIGatewayHttpResolver) -> dict[str, Any]:
    data = raw_body(app)
    if not data.strip():
        raise ApiError(400, "invalid_json", "request body must be a JSON object")
    try:
        parsed = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"malformed JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise ApiError(400, "invalid_json", "request body must be a JSON object")
    return parsed


def headers(app: APIGatewayHttpResolver) -> dict[str, str]:
    return dict(app.current_event.headers or {})
