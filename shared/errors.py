"""The one error type the API turns into `{"error": {"code", "message"}}` responses."""

from __future__ import annotations


class ApiError(Exception):
    """An expected failure with its HTTP status; never carries a stack trace to the client."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def bad_request(message: str, code: str = "bad_request") -> ApiError:
    return ApiError(400, code, message)


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})


def invalid_token(message: str) -> ApiError:
    """A bearer token that fails verification in any way (never a 5xx)."""
    return ApiError(401, "invalid_token", message, {"WWW-Authenticate": 'Bearer error="invalid_token"'})


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def unavailable(what: str) -> ApiError:
    """A backend the function needs is down or restarting: worth retrying shortly."""
    return ApiError(503, "unavailable", f"{what} is unavailable; retry shortly", {"Retry-After": "1"})
