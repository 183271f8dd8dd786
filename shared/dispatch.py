"""Calls between functions: the orchestrator "kick", and dispatching a batch of steps to an executor."""

from __future__ import annotations

from functools import cache
from typing import Any

import httpx
from pydantic import ValidationError

from shared import tls
from shared.log import logger
from shared.protocol import BatchResponse
from shared.settings import settings

# Long enough to deliver the request, too short to wait for its answer: the
# orchestrator keeps running after we hang up (the gateway and Lambda both do).
KICK_TIMEOUT = httpx.Timeout(connect=0.5, read=0.002, write=0.5, pool=0.5)
KICK_REASON = "job started"


@cache
def _http() -> httpx.Client:
    return httpx.Client(limits=httpx.Limits(max_connections=20, max_keepalive_connections=0),
                        verify=tls.context())


def internal_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {settings().internal_token}"}


def functions_url(event: dict[str, Any] | None = None) -> str:
    """Configured base URL, else the domain this request arrived on (the HttpApi's own).

    The template cannot pass the API's URL to its own functions (a circular
    dependency), so on AWS the functions learn it from the event.
    """
    if settings().functions_url:
        return settings().functions_url
    domain = ((event or {}).get("requestContext") or {}).get("domainName")
    return f"https://{domain}" if domain else ""


def kick_orchestrator(reason: str, event: dict[str, Any] | None = None) -> None:
    """Best effort: a failure never fails the caller; pg_cron is the safety net."""
    base = functions_url(event)
    if not base:
        return
    try:
        _http().post(f"{base}/internal/orchestrator", json={"reason": reason},
                     headers=internal_headers(), timeout=KICK_TIMEOUT)
    except httpx.TimeoutException:
        pass  # delivered; we do not wait for the pass to finish
    except httpx.HTTPError as exc:
        logger.warning("orchestrator kick failed", extra={"error": str(exc), "reason": reason})


class DispatchError(Exception):
    """The executor did not answer with an outcome.

    `delivered` False means it certainly did not run the step (connection
    refused, a 4xx): the orchestrator fails the attempt at once. Otherwise the
    executor may still be working (timeouts, a gateway's 5xx) and the lease
    decides: if the executor never reports, recovery retries the step.
    """

    def __init__(self, message: str, *, delivered: bool, retryable: bool = True) -> None:
        super().__init__(message)
        self.delivered = delivered
        self.retryable = retryable


def executor_path(target_function: str) -> str:
    """`execute-http-download` (the function's name, as in the seed) -> its route."""
    return f"/internal/executors/{target_function.removeprefix('execute-')}"


async def call_executor(
    http: httpx.AsyncClient, base_url: str, target_function: str, body: bytes,
    timeout_s: float,
) -> BatchResponse:
    """POST a batch of steps (`body`, a BatchRequest already in JSON) to their executor;
    its answer is each step's outcome."""
    url = f"{base_url}{executor_path(target_function)}"
    headers = {**internal_headers(), "Content-Type": "application/json"}
    try:
        response = await http.post(url, content=body, headers=headers,
                                   timeout=httpx.Timeout(timeout_s, connect=5.0))
    except httpx.ConnectError as exc:
        raise DispatchError(f"executor unreachable: {exc}", delivered=False) from exc
    except httpx.HTTPError as exc:
        raise DispatchError(f"executor did not answer: {exc!r}", delivered=True) from exc
    if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
        raise DispatchError(
            f"executor {target_function} refused the step: HTTP {response.status_code} "
            f"{response.text[:300]}", delivered=False, retryable=False)
    if response.status_code >= 400:
        raise DispatchError(f"executor answered HTTP {response.status_code}", delivered=True)
    try:
        return BatchResponse.model_validate_json(response.content)
    except ValidationError as exc:
        raise DispatchError(f"executor answered something else: {exc}", delivered=True) from exc
