"""One orchestrator pass: recover, claim, resolve inputs, dispatch, and keep draining.

The pass keeps claiming steps that become ready while executors answer, so a job
moves from step to step without waiting for a cron tick, and then lingers in case
more comes; an idle pass waits inside Postgres (wait_for_ready), not by polling over
HTTP. While a pass is alive (its heartbeat row, renewed as it claims)
a start needs no kick: start_job says so. This coalesces kicks in the database, so
it works on Lambda, where every kick is an invocation of its own. A pass ends with
end_pass, which waits for the starts that saw it alive, and one last claim.

Any number of passes may run at once: claims are SKIP LOCKED and leases fence late
results.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import asdict, dataclass, replace
from typing import Any

import httpx
from postgrest import AsyncPostgrestClient
from postgrest.exceptions import APIError

from shared import db, dispatch, state, tls
from shared.log import logger
from shared.protocol import MAX_BATCH, Outcome, StepOutcome
from shared.settings import settings

# Waiting for a retry that is due soon beats leaving it to the next cron tick.
MAX_RETRY_WAIT_S = 5.0
# A pass's heartbeat says it is alive this long; it is renewed when half has passed.
HEARTBEAT_S = 1.0
# An idle pass waits in Postgres (wait_for_ready) this long at a time for a new step.
READY_WAIT_S = 0.05


@dataclass
class PassSummary:
    claimed: int = 0
    claims: int = 0  # claim_steps calls, and those that found nothing
    empty_claims: int = 0
    dispatched: int = 0
    completed: int = 0
    failed: int = 0
    retries_scheduled: int = 0
    stale: int = 0
    recovered: int = 0
    jobs_finished: int = 0
    undelivered: int = 0
    skipped: int = 0  # 1: a kicked pass that found another pass alive, and ended at once
    duration_ms: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Pass:
    def __init__(self, client: AsyncPostgrestClient, http: httpx.AsyncClient, base_url: str,
                 deadline: float, knobs: Knobs) -> None:
        self.client = client
        self.http = http
        self.base_url = base_url
        self.deadline = deadline
        self.knobs = knobs
        self.summary = PassSummary()
        self.pass_id = str(uuid.uuid4())
        self.renew_at = 0.0  # when the heartbeat next needs renewing; 0: not alive
        self.inflight: dict[asyncio.Task[None], int] = {}  # a batch's task -> its steps
        self.waiter: asyncio.Task[bool] | None = None  # wait_for_ready, while one runs

    async def finish_stranded(self) -> None:
        """The sweep: jobs whose steps are all complete but whose finisher (the executor
        that completed the last step) died before finishing them."""
        jobs = await state.finishable_jobs_async(self.client)
        if not jobs:
            return
        ended = await state.finish_jobs_async(
            self.client, [state.finishing(job["job_id"], job["payload"]) for job in jobs])
        for job_id, status in ended.items():
            self.summary.jobs_finished += status == "completed"
            logger.info(f"job {status}", extra={"job_id": job_id})

    @staticmethod
    def batches(claimed: list[state.ClaimedStep]) -> tuple[list[Batch], list[StepOutcome]]:
        """The claimed steps grouped into requests per executor, each within MAX_BATCH
        steps and the executor's body limit; a step that cannot be prepared, or whose
        request alone is over the limit, is a permanent failure of its own, never the
        batch's."""
        ready, failures = state.prepare_all(claimed)
        room = settings().max_internal_body_bytes - len(Batch("", []).body())
        groups: dict[str, list[tuple[state.ClaimedStep, bytes]]] = {}
        for p in ready:
            if len(p.body) > room:
                failures.append(p.step.failed(
                    f"the step's request is {len(p.body)} bytes, over the executor's limit of"
                    f" {room} (its inputs are too large)", retryable=False, error_type="input"))
            else:
                groups.setdefault(str(p.step.target_function), []).append((p.step, p.body))
        batches: list[Batch] = []
        for target, items in groups.items():
            batch: list[tuple[state.ClaimedStep, bytes]] = []
            size = 0
            for item in items:
                if batch and (len(batch) == MAX_BATCH or size + len(item[1]) > room):
                    batches.append(Batch(target, batch))
                    batch, size = [], 0
                batch.append(item)
                size += len(item[1]) + 2  # and the ", " that joins it
            if batch:
                batches.append(Batch(target, batch))
        return batches, failures

    async def run_batch(self, batch: Batch) -> None:
        steps = batch.steps
        self.summary.dispatched += len(steps)
        try:
            response = await dispatch.call_executor(
                self.http, self.base_url, batch.target, batch.body(),
                max(step.timeout_s for step in steps) + 5)
        except dispatch.DispatchError as exc:
            if exc.delivered:
                self.summary.undelivered += len(steps)
                logger.warning("no outcome from executor; the leases will decide", extra={
                    "steps": [step.log_keys() for step in steps], "error": str(exc)})
            else:
                await self.fail([step.failed(str(exc), retryable=exc.retryable, error_type="dispatch")
                                 for step in steps])
            return
        for result in response.results:
            self._count(result.outcome)

    def _count(self, outcome: Outcome) -> None:
        if outcome == "completed":
            self.summary.completed += 1
        elif outcome == "retry_scheduled":
            self.summary.retries_scheduled += 1
        elif outcome == "failed":
            self.summary.failed += 1
        elif outcome == "stale":
            self.summary.stale += 1

    async def fail(self, outcomes: list[StepOutcome]) -> None:
        """Steps that never reached an executor: their failures, recorded in one RPC."""
        for recorded in await state.record_outcomes_async(self.client, outcomes):
            self._count(recorded.outcome)
        for outcome in outcomes:
            logger.warning("step failed before dispatch", extra={
                "job_id": outcome.job_id, "step_id": outcome.step_id, "error": outcome.error})

    def busy(self) -> int:
        return sum(self.inflight.values())

    async def claim(self, limit: int) -> int:
        """Claim and dispatch; the heartbeat rides along when it needs renewing."""
        renew = time.monotonic() >= self.renew_at
        claimed = await state.claim_steps_async(
            self.client, limit, self.pass_id if renew else None, HEARTBEAT_S)
        if renew:
            self.renew_at = time.monotonic() + HEARTBEAT_S / 2
        self.summary.claimed += len(claimed)
        self.summary.claims += limit > 0
        self.summary.empty_claims += limit > 0 and not claimed
        batches, failures = self.batches(claimed)
        if failures:
            await self.fail(failures)
        for batch in batches:
            self.inflight[asyncio.create_task(self.run_batch(batch))] = len(batch.steps)
        return len(claimed)

    async def end(self) -> bool:
        """Stop being alive, then claim once more: a start that saw this pass alive has
        committed by now (end_pass waits for it), so its job is found here or it kicked."""
        await state.end_pass_async(self.client, self.pass_id)
        self.renew_at = float("inf")  # the last claim must not bring the heartbeat back
        found = await self.claim(self.knobs.batch)
        self.renew_at = 0.0
        return found == 0

    async def settle(self, timeout: float, watch: bool) -> bool:
        """Wait up to `timeout` for a batch to end or, when `watch` (the last claim found
        all there was and there is room for more), for a step to become ready (told by
        wait_for_ready, which runs on in the background). True when a step is ready."""
        waits: set[asyncio.Task[Any]] = set(self.inflight)
        if watch:
            if self.waiter is None:
                self.waiter = asyncio.create_task(
                    state.wait_for_ready_async(self.client, min(READY_WAIT_S, timeout)))
            waits.add(self.waiter)
        if not waits:
            await asyncio.sleep(timeout)
            return False
        done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        ready = False
        for task in done:
            if task is self.waiter:
                self.waiter = None
                ready = task.exception() is None and bool(task.result())
                continue
            self.inflight.pop(task, None)
            if task.exception() is not None:
                logger.error("batch task failed", exc_info=task.exception())
        return ready

    async def run(self, housekeeping_too: bool) -> PassSummary:
        if not housekeeping_too:  # kicked: only if no other pass is alive to take the work
            if not await state.begin_pass_async(self.client, self.pass_id, HEARTBEAT_S):
                self.summary.skipped = 1
                return self.summary
            self.renew_at = time.monotonic() + HEARTBEAT_S / 2
        # Housekeeping runs beside the first claim, not before it: a kicked pass
        # should reach its job's first step in one round trip.
        housekeeping = asyncio.create_task(
            self.housekeeping() if housekeeping_too else asyncio.sleep(0))
        knobs = self.knobs
        idle_since, woken = time.monotonic(), False
        try:
            while True:
                left = self.deadline - time.monotonic()
                room = knobs.concurrency - self.busy()
                if left <= 0:
                    await self.end()
                    if self.inflight:  # the executors record their outcomes themselves
                        await asyncio.wait(self.inflight, timeout=2.0)
                    break
                if room > 0:
                    limit = min(knobs.batch, room)
                    found = await self.claim(limit)
                    if found:
                        idle_since = time.monotonic()
                    elif woken:  # the ready step went to another claimer, or is not claimable
                        await asyncio.sleep(knobs.poll_s)
                    if found == limit and self.busy() < knobs.concurrency:
                        continue  # more may be waiting: claim again before waiting
                elif time.monotonic() >= self.renew_at:
                    # At its limit the pass claims nothing, but it is alive: starts must not
                    # kick more passes (each would take `concurrency` more steps at once).
                    await self.claim(0)
                if not self.inflight and time.monotonic() - idle_since >= knobs.linger_s:
                    due = await state.next_due_in_async(self.client)
                    # (due now, yet not claimed for linger_s: other passes hold those steps)
                    if due is None or due <= 0 or due > min(MAX_RETRY_WAIT_S, left):
                        if await self.end():
                            break
                        idle_since = time.monotonic()
                        continue
                woken = await self.settle(min(knobs.linger_s, HEARTBEAT_S / 4, max(left, 0.001)),
                                          watch=self.busy() < knobs.concurrency)
        finally:
            if self.renew_at != 0.0 and self.renew_at != float("inf"):
                try:  # a pass that fails still stops being alive, if it can
                    await state.end_pass_async(self.client, self.pass_id)
                except (APIError, httpx.HTTPError):
                    pass  # its heartbeat expires within HEARTBEAT_S
        if self.waiter is not None:
            await asyncio.wait([self.waiter], timeout=READY_WAIT_S + 1)
        await housekeeping
        return self.summary

    async def housekeeping(self) -> None:
        """Expired leases become retryable failures; stranded finished jobs get finished."""
        self.summary.recovered = await state.recover_expired_leases_async(self.client)
        await self.finish_stranded()


@dataclass(frozen=True)
class Batch:
    """Steps for one executor function, sent as one request."""

    target: str
    items: list[tuple[state.ClaimedStep, bytes]]

    @property
    def steps(self) -> list[state.ClaimedStep]:
        return [step for step, _ in self.items]

    def body(self) -> bytes:
        """A BatchRequest, joined from the steps' own JSON (each encoded on its own)."""
        return b'{"steps": [' + b", ".join(body for _, body in self.items) + b"]}"


@dataclass(frozen=True)
class Knobs:
    """How a pass runs; the defaults are Settings' (SUPAFLOW_ORCHESTRATOR_*)."""

    concurrency: int  # steps in flight at once
    batch: int  # steps per claim
    linger_s: float  # how long an idle pass keeps waiting for new steps
    poll_s: float  # the pause after a wake-up whose claim found nothing

    @classmethod
    def from_settings(cls, **overrides: Any) -> Knobs:
        s = settings()
        return replace(cls(concurrency=s.orchestrator_concurrency, batch=s.orchestrator_batch,
                           linger_s=s.orchestrator_linger_s, poll_s=s.orchestrator_poll_s), **overrides)


async def run_pass(base_url: str, budget_s: float, knobs: Knobs | None = None,
                   kicked: bool = False) -> PassSummary:
    """A kicked pass (start-workflow kicks one when no pass is alive) runs only if no other
    pass is alive (begin_pass: a burst of starts sends a burst of kicks), and leaves lease
    recovery and stranded jobs to the scheduled passes, saving two RPCs."""
    started = time.monotonic()
    knobs = knobs or Knobs.from_settings()
    limits = httpx.Limits(max_connections=knobs.concurrency + 8,
                          max_keepalive_connections=knobs.concurrency + 8)
    try:
        async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(30.0, connect=5.0),
                                     verify=tls.context()) as http:
            client = db.as_service_async(http)
            summary = await Pass(client, http, base_url, started + budget_s, knobs).run(
                housekeeping_too=not kicked)
    except (APIError, httpx.HTTPError) as exc:
        logger.error("orchestrator pass stopped: database unreachable", extra={"error": str(exc)})
        raise
    summary.duration_ms = int((time.monotonic() - started) * 1000)
    return summary
