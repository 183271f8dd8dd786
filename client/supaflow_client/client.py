"""The typed client of supaflow's HTTP API (docs/openapi.yaml): `Client` (blocking, on
httpx.Client) and `AsyncClient` (asyncio, on httpx.AsyncClient), with the same methods,
names and parameters.

Every method is written once, in `_Api`: it describes its request as a `_Call` (method,
path, query, JSON body, whether it is safe to send twice) and hands it to the client to
execute. What an answer means (the decoded body, a `SupaflowError`, or another attempt
after a delay) is decided by shared code too (`_Api._outcome`); the two clients differ only
in how they send a request and how they sleep: `_execute`, `_paginate` and `_wait`.

Retries: a 503 or a connection error (connect, read or write error, a timeout, a
connection dropped mid-answer) is retried, up to `retries` times, after
`backoff_s * 2**n` seconds or the answer's `Retry-After`, at most `MAX_DELAY_S` -- but
only for a request that is safe to send again: GET, PUT, DELETE, cancel and retry, publish
with an `expected_version`, and starts, which always carry an idempotency key (one is
generated when the caller gives none, and the same key goes with every attempt). When the
attempts are used up (or the request is not safe to repeat) it raises
`SupaflowUnavailable`.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import math
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal, Self
from urllib.parse import quote

import httpx
from pydantic import BaseModel

JSON = dict[str, Any]
JobStatus = Literal["pending", "running", "completed", "failed", "awaiting_retry", "cancelled"]
Scope = Literal["own", "tenant"]
Origin = Literal["api", "sql", "trigger", "schedule", "webhook"]
# on_progress of wait(): AsyncClient also awaits what it returns (an async callback).
ProgressCallback = Callable[[JSON], object]

TERMINAL = frozenset({"completed", "failed", "cancelled"})
MAX_DELAY_S = 10.0  # the longest pause between two attempts, whatever Retry-After says
USER_AGENT = "supaflow-client/0.1.0"
# Transport errors worth another attempt (not a bad URL, a proxy refusing, a malformed request).
RETRYABLE_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)

# Every operationId of docs/openapi.yaml and the method that calls it (tests/test_client.py
# keeps the two in step). start_many, list_jobs, job_events and wait build on these.
OPERATIONS: dict[str, str] = {
    "startWorkflow": "start",
    "listWorkflows": "list_workflows",
    "getWorkflow": "get_workflow",
    "putWorkflowDraft": "put_workflow",
    "deactivateWorkflow": "delete_workflow",
    "publishWorkflow": "publish_workflow",
    "listTransformers": "list_transformers",
    "putTransformer": "put_transformer",
    "listJobs": "list_jobs_page",
    "getJob": "get_job",
    "cancelJob": "cancel_job",
    "retryJob": "retry_job",
    "listJobEvents": "job_events_page",
    "getHealth": "health",
    "listTriggers": "list_triggers",
    "putTrigger": "put_trigger",
    "deleteTrigger": "delete_trigger",
    "listSchedules": "list_schedules",
    "putSchedule": "put_schedule",
    "deleteSchedule": "delete_schedule",
    "listWebhooks": "list_webhooks",
    "putWebhook": "put_webhook",
    "deleteWebhook": "delete_webhook",
    "receiveWebhook": "deliver_webhook",
    "getMetrics": "metrics",
    "listAlerts": "list_alerts",
    "listAlertRules": "list_alert_rules",
    "putAlertRule": "put_alert_rule",
    "getStats": "stats",
}


# Errors --------------------------------------------------------------------------------


class SupaflowError(Exception):
    """The API refused a request: its HTTP `status` and the `code` and `message` of its
    `{"error": {"code", "message"}}` (`http_<status>` and the text, for an answer that is
    not JSON). `retry_after`: the answer's Retry-After in seconds (429, 503), if any."""

    def __init__(self, status: int, code: str, message: str, *,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


class SupaflowUnavailable(SupaflowError):
    """503, or no answer at all (connection refused or dropped, a timeout), once the retries
    are used up or when the request was not safe to send again. `code` is the API's
    (`unavailable`, `auth_unavailable`), `unavailable` when there was no answer."""

    def __init__(self, message: str, *, code: str = "unavailable",
                 retry_after: float | None = None) -> None:
        super().__init__(503, code, message, retry_after=retry_after)


def _retry_after(response: httpx.Response) -> float | None:
    try:
        seconds = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None  # absent, or an HTTP date: the backoff decides
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _json_object(response: httpx.Response) -> JSON | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _error(response: httpx.Response) -> SupaflowError:
    """The exception for a refusal: the API's code and message when it gave them."""
    status = response.status_code
    body = _json_object(response) or {}
    error = body.get("error")
    code = message = None
    if isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
    if not isinstance(message, str):
        message = response.text[:500].strip() or response.reason_phrase or f"HTTP {status}"
    retry_after = _retry_after(response)
    if status == 503:
        return SupaflowUnavailable(message, code=code if isinstance(code, str) else "unavailable",
                                   retry_after=retry_after)
    return SupaflowError(status, code if isinstance(code, str) else f"http_{status}", message,
                         retry_after=retry_after)


# Requests, described -------------------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    """One request, as both clients send it."""

    method: str
    path: str
    params: Mapping[str, str] = field(default_factory=dict)
    body: Any = None  # the JSON body; None: no body
    retry: bool = True  # safe to send again (idempotent)
    auth: bool = True  # sends the token
    answers: frozenset[int] = frozenset()  # statuses besides 2xx whose JSON body is the answer
    content: bytes | None = None  # a raw body, sent as it is (instead of `body`)
    text: bool = False  # the answer is text, returned as {"text": ...}
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Pages:
    """A paginated listing: the first page's call, where a page keeps its items, and how
    a page names the next one (`next_field`, sent back as the query's `next_param`)."""

    first: _Call
    items: str
    next_field: str
    next_param: str

    def after(self, page: JSON) -> _Call | None:
        token = page.get(self.next_field)
        if token is None:
            return None
        return replace(self.first, params={**self.first.params, self.next_param: str(token)})


@dataclass(frozen=True)
class _Again:
    """Send the call again after `delay` seconds."""

    delay: float


class _Waiter:
    """Follows one job for wait(): whether it changed since the last look (its status, or a
    step's status or attempt), whether it ended, and how long to sleep before the next."""

    def __init__(self, job_id: str, timeout: float, poll_s: float) -> None:
        self.job_id, self.timeout, self.poll_s = job_id, timeout, poll_s
        self.deadline = time.monotonic() + timeout
        self.seen: object = None

    def changed(self, job: JSON) -> bool:
        state = (job.get("status"), tuple(
            (s.get("step_id"), s.get("status"), s.get("attempt")) for s in job.get("steps") or ()))
        changed, self.seen = state != self.seen, state
        return changed

    @staticmethod
    def ended(job: JSON) -> bool:
        return job.get("status") in TERMINAL

    def pause(self, job: JSON) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"job {self.job_id} is still {job.get('status')} after {self.timeout:g} s")
        return min(self.poll_s, left)


def _segment(value: str) -> str:
    return quote(value, safe="")


def _query(**values: object) -> dict[str, str]:
    """Query parameters: None left out, datetimes as ISO 8601."""
    return {name: value.isoformat() if isinstance(value, datetime) else str(value)
            for name, value in values.items() if value is not None}


def _fields(**values: object) -> JSON:
    return {name: value for name, value in values.items() if value is not None}


def _plain(value: Mapping[str, Any] | BaseModel) -> JSON:
    """A definition or config as JSON: a pydantic model (e.g. supaflow_models'
    WorkflowDefinition) as the fields that were set."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_unset=True)
    return dict(value)


def new_idempotency_key() -> str:
    return uuid.uuid4().hex


def _with_key(start: Mapping[str, Any]) -> JSON:
    """A start as sent: with a generated idempotency key when it has none."""
    key = start.get("idempotency_key")
    return {**start, "idempotency_key": new_idempotency_key() if key is None else key}


# The methods, once for both clients ----------------------------------------------------


class _Api[H: (httpx.Client, httpx.AsyncClient), R, I](ABC):
    """Every API method. R is what a call returns (the decoded JSON, or a coroutine of it),
    I what a listing returns (an iterator, or an async iterator); H the httpx client."""

    http: H  # the underlying httpx client (its event hooks, limits, ...)

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 30.0,
                 retries: int = 4, backoff_s: float = 0.5) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.retries = retries
        self.backoff_s = backoff_s
        self.http = self._connect(self.url, timeout)

    # What each client does its own way.

    @abstractmethod
    def _connect(self, url: str, timeout: float) -> H: ...

    @abstractmethod
    def _execute(self, call: _Call) -> R: ...

    @abstractmethod
    def _paginate(self, pages: _Pages) -> I: ...

    @abstractmethod
    def _wait(self, waiter: _Waiter, on_progress: ProgressCallback | None) -> R: ...

    # What both share.

    def _request(self, call: _Call) -> dict[str, Any]:
        """httpx's request() arguments for a call."""
        headers = {"User-Agent": USER_AGENT, **call.headers}
        if call.auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        body = {"json": call.body} if call.content is None else {"content": call.content}
        return {"method": call.method, "url": call.path, "params": call.params, **body,
                "headers": headers}

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        after = None if response is None else _retry_after(response)
        return min(MAX_DELAY_S, self.backoff_s * 2**attempt if after is None else after)

    def _outcome(self, call: _Call, attempt: int,
                 answer: httpx.Response | httpx.TransportError) -> JSON | _Again:
        """What attempt `attempt` (0 first) of `call` comes to: the answer's JSON, another
        attempt after a delay, or an exception."""
        again = call.retry and attempt < self.retries
        if isinstance(answer, httpx.TransportError):
            if again and isinstance(answer, RETRYABLE_ERRORS):
                return _Again(self._delay(attempt, None))
            raise SupaflowUnavailable(
                f"{call.method} {call.path}: no answer ({type(answer).__name__}: {answer})") from answer
        if call.text and answer.is_success:
            return {"text": answer.text}
        if answer.is_success or answer.status_code in call.answers:
            body = _json_object(answer)
            if body is not None:
                return body
            if answer.is_success:
                raise SupaflowError(answer.status_code, "invalid_response",
                                    f"not a JSON object: {answer.text[:200]!r}")
        if answer.status_code == 503 and again:
            return _Again(self._delay(attempt, answer))
        raise _error(answer)

    # Jobs.

    def start(self, workflow_id: str, input_data: Mapping[str, Any] | None = None, *,
              idempotency_key: str | None = None, start_at: datetime | str | None = None,
              delay_s: float | None = None) -> R:
        """POST /workflows/start: a job of the workflow (`job_id`, `status`, `created_at`).
        Without an idempotency_key one is generated, so retries never start it twice.
        `start_at` or `delay_s` puts its first steps off."""
        when = start_at.isoformat() if isinstance(start_at, datetime) else start_at
        start = _fields(workflow_id=workflow_id, idempotency_key=idempotency_key,
                        input_data=None if input_data is None else dict(input_data),
                        start_at=when, delay_s=delay_s)
        return self._execute(_Call("POST", "/workflows/start", body=_with_key(start)))

    def start_many(self, starts: Sequence[Mapping[str, Any]]) -> R:
        """POST /workflows/start with {"jobs": [...]}: up to 1,000 starts (each a mapping of
        `workflow_id`, `input_data`, `idempotency_key`, sent as given; a key is generated for
        each item without one) in one transaction. `{"results": [...]}`, one per item, in
        order: `created`, `existing` or `refused` with the error that start alone would have had."""
        return self._execute(_Call("POST", "/workflows/start",
                                   body={"jobs": [_with_key(s) for s in starts]}))

    def get_job(self, job_id: str) -> R:
        """GET /jobs/{job_id}: the job with its `steps`."""
        return self._execute(_Call("GET", f"/jobs/{_segment(job_id)}"))

    def list_jobs_page(self, *, workflow_id: str | None = None, status: JobStatus | None = None,
                       created_after: datetime | str | None = None,
                       created_before: datetime | str | None = None, scope: Scope | None = None,
                       origin: Origin | None = None, limit: int | None = None,
                       cursor: str | None = None) -> R:
        """GET /jobs: one page, newest first (`jobs`, `next_cursor`: pass it back as
        `cursor` with the same filters)."""
        return self._execute(_Call("GET", "/jobs", params=_query(
            workflow_id=workflow_id, status=status, created_after=created_after,
            created_before=created_before, scope=scope, origin=origin, limit=limit,
            cursor=cursor)))

    def list_jobs(self, *, workflow_id: str | None = None, status: JobStatus | None = None,
                  created_after: datetime | str | None = None,
                  created_before: datetime | str | None = None, scope: Scope | None = None,
                  origin: Origin | None = None, page_size: int | None = None) -> I:
        """Every job the filters select, newest first, fetched a page (`page_size`, at most
        200) at a time as the iteration goes."""
        first = _Call("GET", "/jobs", params=_query(
            workflow_id=workflow_id, status=status, created_after=created_after,
            created_before=created_before, scope=scope, origin=origin, limit=page_size))
        return self._paginate(_Pages(first, "jobs", "next_cursor", "cursor"))

    def cancel_job(self, job_id: str) -> R:
        """POST /jobs/{job_id}/cancel: `{"job_id", "cancelled", "status"}` (`cancelled`
        false when the job had already finished). Retried like a GET: it is idempotent."""
        return self._execute(_Call("POST", f"/jobs/{_segment(job_id)}/cancel"))

    def retry_job(self, job_id: str) -> R:
        """POST /jobs/{job_id}/retry: a failed or cancelled job runs again from its unfinished
        steps (`job_id`, `status`, `retried_steps`). Retried through outages: if an attempt
        took effect but its answer was lost, the next one is a 409 `not_retryable` (the
        job is no longer failed or cancelled): read the job to know."""
        return self._execute(_Call("POST", f"/jobs/{_segment(job_id)}/retry"))

    def job_events_page(self, job_id: str, *, after: int | None = None,
                        limit: int | None = None) -> R:
        """GET /jobs/{job_id}/events: one page of the job's log, oldest first (`events`,
        `next_after`: pass it back as `after`)."""
        return self._execute(_Call("GET", f"/jobs/{_segment(job_id)}/events",
                                   params=_query(after=after, limit=limit)))

    def job_events(self, job_id: str, *, after: int = 0, page_size: int | None = None) -> I:
        """Every event of the job's log after seq `after`, in order, a page at a time."""
        first = _Call("GET", f"/jobs/{_segment(job_id)}/events",
                      params=_query(after=after, limit=page_size))
        return self._paginate(_Pages(first, "events", "next_after", "after"))

    def wait(self, job_id: str, *, timeout: float = 300, poll_s: float = 0.5,
             on_progress: ProgressCallback | None = None) -> R:
        """Polls the job every `poll_s` until it is completed, failed or cancelled, and
        returns it; calls `on_progress(job)` with the first look and with every change of
        its status or of a step's status or attempt (AsyncClient: a plain or an async
        function). TimeoutError after `timeout` seconds."""
        return self._wait(_Waiter(job_id, timeout, poll_s), on_progress)

    # Workflows and transformers.

    def list_workflows(self) -> R:
        """GET /workflows: `{"workflows": [...]}`, those the caller may start (an admin's
        also those they manage)."""
        return self._execute(_Call("GET", "/workflows"))

    def get_workflow(self, workflow_id: str) -> R:
        """GET /workflows/{workflow_id} (to an admin: with its draft and versions)."""
        return self._execute(_Call("GET", f"/workflows/{_segment(workflow_id)}"))

    def put_workflow(self, workflow_id: str, definition: Mapping[str, Any] | BaseModel, *,
                     description: str | None = None, tenant_id: str | None = None) -> R:
        """PUT /workflows/{workflow_id} (admins): create or replace the draft; the answer
        holds it as stored (normalised), with its `draft.revision`."""
        body = _fields(definition=_plain(definition), description=description, tenant_id=tenant_id)
        return self._execute(_Call("PUT", f"/workflows/{_segment(workflow_id)}", body=body))

    def publish_workflow(self, workflow_id: str, *, expected_version: int | None = None,
                         draft_revision: int | None = None) -> R:
        """POST /workflows/{workflow_id}/publish (admins): the draft becomes the next version
        (`workflow_id`, `version`, `new_version`). `expected_version` (0: none yet) makes a
        race with another publish a 409 `version_conflict`, `draft_revision` one with
        another PUT of the draft. Retried through outages only with an expected_version
        (a retry of a publish that took effect is then a 409 `no_draft`: the draft is gone)."""
        body = _fields(expected_version=expected_version, draft_revision=draft_revision)
        return self._execute(_Call("POST", f"/workflows/{_segment(workflow_id)}/publish",
                                   body=body or None, retry=expected_version is not None))

    def delete_workflow(self, workflow_id: str) -> R:
        """DELETE /workflows/{workflow_id} (admins): deactivate it (new starts 404)."""
        return self._execute(_Call("DELETE", f"/workflows/{_segment(workflow_id)}"))

    def list_transformers(self) -> R:
        """GET /transformers (admins): `{"transformers": [...]}`."""
        return self._execute(_Call("GET", "/transformers"))

    def put_transformer(self, transformer_id: str, type: str,
                        config: Mapping[str, Any] | BaseModel, *, description: str | None = None,
                        tenant_id: str | None = None) -> R:
        """PUT /transformers/{transformer_id} (admins): create or replace it; the answer
        holds it as stored, with `created`."""
        body = _fields(type=type, config=_plain(config), description=description, tenant_id=tenant_id)
        return self._execute(_Call("PUT", f"/transformers/{_segment(transformer_id)}", body=body))

    def list_triggers(self) -> R:
        """GET /triggers (the service role): `{"triggers": [...]}`, each with its installed
        SQL and its failed starts."""
        return self._execute(_Call("GET", "/triggers"))

    def put_trigger(self, trigger_id: str, workflow_id: str, table: str, events: Sequence[str], *,
                    condition: str | None = None, input_mapping: Mapping[str, str] | None = None,
                    owner_column: str | None = None, start_at_column: str | None = None,
                    start_offset_s: float = 0) -> R:
        """PUT /triggers/{trigger_id} (the service role): start `workflow_id` on each change
        of `table` (schema.table) that `events` and `condition` admit; with
        `start_at_column`, at that column's time plus `start_offset_s` (negative: before)."""
        body = _fields(workflow_id=workflow_id, table=table, events=list(events),
                       condition=condition, input_mapping=dict(input_mapping or {}) or None,
                       owner_column=owner_column, start_at_column=start_at_column,
                       start_offset_s=start_offset_s or None)
        return self._execute(_Call("PUT", f"/triggers/{_segment(trigger_id)}", body=body))

    def delete_trigger(self, trigger_id: str) -> R:
        """DELETE /triggers/{trigger_id} (the service role): its trigger is dropped."""
        return self._execute(_Call("DELETE", f"/triggers/{_segment(trigger_id)}"))

    def list_schedules(self) -> R:
        """GET /schedules (the service role): `{"schedules": [...]}`."""
        return self._execute(_Call("GET", "/schedules"))

    def put_schedule(self, schedule_id: str, workflow_id: str, cron: str, *,
                     timezone: str = "UTC", input_data: Mapping[str, Any] | None = None,
                     owner: str | None = None, enabled: bool = True,
                     overlap: Literal["skip", "allow"] = "skip") -> R:
        """PUT /schedules/{schedule_id} (the service role): start `workflow_id` on `cron`
        read in `timezone` (an IANA name), for `owner` or nobody; its pg_cron job exists
        while it is enabled."""
        body = _fields(workflow_id=workflow_id, cron=cron, timezone=timezone,
                       input=None if input_data is None else dict(input_data), owner=owner,
                       enabled=enabled, overlap=overlap)
        return self._execute(_Call("PUT", f"/schedules/{_segment(schedule_id)}", body=body))

    def delete_schedule(self, schedule_id: str) -> R:
        """DELETE /schedules/{schedule_id} (the service role): its pg_cron job goes too."""
        return self._execute(_Call("DELETE", f"/schedules/{_segment(schedule_id)}"))

    def list_webhooks(self) -> R:
        """GET /webhooks (admins): `{"webhooks": [...]}`, never with their secrets."""
        return self._execute(_Call("GET", "/webhooks"))

    def put_webhook(self, webhook_id: str, workflow_id: str, *,
                    signature: Literal["standard", "github", "stripe"] = "standard",
                    secret: str | None = None, rotate_secret: bool = False,
                    tolerance_s: int | None = None, headers: Sequence[str] = (),
                    input_mapping: Mapping[str, Any] | None = None, owner: str | None = None,
                    status: Literal["active", "paused"] = "active") -> R:
        """PUT /webhooks/{webhook_id} (admins): signed deliveries to POST
        /webhooks/{webhook_id} start `workflow_id`. The answer's `secret` is set when
        this call set it (a new webhook, `rotate_secret`): keep it, it is not shown again."""
        body = _fields(workflow_id=workflow_id, signature=signature, secret=secret,
                       rotate_secret=rotate_secret, tolerance_s=tolerance_s,
                       headers=list(headers),
                       input_mapping=None if input_mapping is None else dict(input_mapping),
                       owner=owner, status=status)
        return self._execute(_Call("PUT", f"/webhooks/{_segment(webhook_id)}", body=body))

    def delete_webhook(self, webhook_id: str) -> R:
        """DELETE /webhooks/{webhook_id} (admins)."""
        return self._execute(_Call("DELETE", f"/webhooks/{_segment(webhook_id)}"))

    def deliver_webhook(self, webhook_id: str, content: bytes, headers: Mapping[str, str]) -> R:
        """POST /webhooks/{webhook_id} as the sending system would, the body and its
        signature headers as given (no token; not retried: a delivery id counts once)."""
        return self._execute(_Call("POST", f"/webhooks/{_segment(webhook_id)}", auth=False,
                                   retry=False, content=content,
                                   headers={"Content-Type": "application/json", **headers}))

    def metrics(self) -> R:
        """GET /metrics (the service-role key or the internal credential):
        `{"text": <Prometheus' text format>}`."""
        return self._execute(_Call("GET", "/metrics", text=True))

    def stats(self) -> R:
        """GET /stats: `{"scope", "counts": {status: n}, "minutes": [{minute, finished,
        failed}]}` for the jobs the caller sees."""
        return self._execute(_Call("GET", "/stats"))

    def list_alerts(self, *, include_resolved: bool = False) -> R:
        """GET /alerts (operators): `{"alerts": [...]}` firing now (and the last 100
        resolved with `include_resolved`)."""
        return self._execute(_Call("GET", "/alerts",
                                   params=_query(status="all" if include_resolved else None)))

    def list_alert_rules(self) -> R:
        """GET /alert-rules (operators): `{"rules": [...]}`."""
        return self._execute(_Call("GET", "/alert-rules"))

    def put_alert_rule(self, rule_id: str, kind: str, threshold: float, window_s: int, *,
                       description: str | None = None, min_volume: int = 1,
                       enabled: bool = True, webhook_url: str | None = None) -> R:
        """PUT /alert-rules/{rule_id} (operators): fire while the `kind`'s value is over
        `threshold` with `min_volume` behind it over `window_s`; deliver to `webhook_url`."""
        body = _fields(kind=kind, threshold=threshold, window_s=window_s,
                       description=description, min_volume=min_volume, enabled=enabled,
                       webhook_url=webhook_url)
        return self._execute(_Call("PUT", f"/alert-rules/{_segment(rule_id)}", body=body))

    def health(self) -> R:
        """GET /health (no token): `{"status": "ok" | "unhealthy", "checks": {...}}`, for a
        200 and for a 503 alike: an unhealthy deployment is an answer, not an error."""
        return self._execute(_Call("GET", "/health", auth=False, answers=frozenset({503})))


# The two clients: only how a call is sent and how they sleep ---------------------------


class Client(_Api[httpx.Client, JSON, Iterator[JSON]]):
    """The blocking client: `with Client(url, token) as c: c.start(...)`."""

    def _connect(self, url: str, timeout: float) -> httpx.Client:
        return httpx.Client(base_url=url, timeout=timeout)

    def _execute(self, call: _Call) -> JSON:
        for attempt in itertools.count():
            try:
                answer: httpx.Response | httpx.TransportError = self.http.request(**self._request(call))
            except httpx.TransportError as exc:
                answer = exc
            outcome = self._outcome(call, attempt, answer)
            if not isinstance(outcome, _Again):
                return outcome
            time.sleep(outcome.delay)
        raise AssertionError("unreachable")  # itertools.count() never ends

    def _paginate(self, pages: _Pages) -> Iterator[JSON]:
        call: _Call | None = pages.first
        while call is not None:
            page = self._execute(call)
            yield from page[pages.items]
            call = pages.after(page)

    def _wait(self, waiter: _Waiter, on_progress: ProgressCallback | None) -> JSON:
        while True:
            job = self.get_job(waiter.job_id)
            if waiter.changed(job) and on_progress is not None:
                on_progress(job)
            if waiter.ended(job):
                return job
            time.sleep(waiter.pause(job))

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncClient(_Api[httpx.AsyncClient, Coroutine[Any, Any, JSON], AsyncIterator[JSON]]):
    """The asyncio client: `async with AsyncClient(url, token) as c: await c.start(...)`;
    list_jobs and job_events are async iterators (`async for job in c.list_jobs()`)."""

    def _connect(self, url: str, timeout: float) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=url, timeout=timeout)

    async def _execute(self, call: _Call) -> JSON:
        for attempt in itertools.count():
            try:
                answer: httpx.Response | httpx.TransportError = await self.http.request(
                    **self._request(call))
            except httpx.TransportError as exc:
                answer = exc
            outcome = self._outcome(call, attempt, answer)
            if not isinstance(outcome, _Again):
                return outcome
            await asyncio.sleep(outcome.delay)
        raise AssertionError("unreachable")  # itertools.count() never ends

    async def _paginate(self, pages: _Pages) -> AsyncIterator[JSON]:
        call: _Call | None = pages.first
        while call is not None:
            page = await self._execute(call)
            for item in page[pages.items]:
                yield item
            call = pages.after(page)

    async def _wait(self, waiter: _Waiter, on_progress: ProgressCallback | None) -> JSON:
        while True:
            job = await self.get_job(waiter.job_id)
            if waiter.changed(job) and on_progress is not None:
                result = on_progress(job)
                if inspect.isawaitable(result):
                    await result
            if waiter.ended(job):
                return job
            await asyncio.sleep(waiter.pause(job))

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
