"""One orchestrator pass: recover, claim, resolve inputs, dispatch, and keep draining.

The pass keeps claiming steps that become ready while executors answer, so a
job moves from step to step without waiting for a cron tick. Any number of
passes may run at once: claims are SKIP LOCKED and leases fence late results.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from dataclasses import asdict, dataclass

import httpx
from postgrest import AsyncPostgrestClient
from postgrest.exceptions import APIError

from shared import db, dispatch, mapping, state, tls
from shared.log import logger
from shared.protocol import (
    BATCH_MAX_TIMEOUT_S,
    MAX_BATCH,
    Outcome,
    StepOutcome,
    StepRequest,
    TransformerRef,
)

# Waiting for a retry that is due soon beats leaving it to the next cron tick.
MAX_RETRY_WAIT_S = 5.0
# A kick joins a draining pass only if that pass has this long left to serve it.
JOIN_MIN_LEFT_S = 2.0


class Wakeup:
    """How a kick reaches a pass that is already draining, from another thread.

    `pending` says a job was started since the pass last claimed; the pass
    claims again before it stops, so the kicked job never waits for cron.
    """

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.pending = False
        self.full = False  # every dispatch slot taken: a kick would wait, so it starts a pass
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()

    def set(self) -> None:
        self.pending = True
        self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, timeout: float) -> None:
        """Until a kick arrives or `timeout` passes."""
        waiter = self.waiter()
        await asyncio.wait({waiter}, timeout=timeout)
        waiter.cancel()

    def waiter(self) -> asyncio.Task[None]:
        """A task that ends at the next kick (and re-arms the event for the one after)."""
        async def next_kick() -> None:
            await self._event.wait()
            self._event.clear()
        return asyncio.create_task(next_kick())


class KickedPasses:
    """One kicked pass drains per process; later kicks wake it instead of starting
    another pass (one new pass per job started cost more than the job), unless its
    dispatch slots are all taken by slow steps or its budget is nearly spent.

    On Lambda an instance serves one request at a time, so there every kick
    starts its own pass and this changes nothing; in the local gateway, where
    the functions share a process, it keeps passes from piling up under load.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: Wakeup | None = None

    def join_or_register(self, wakeup: Wakeup) -> bool:
        """True: a draining pass took the kick. False: `wakeup`'s pass is now the one."""
        with self._lock:
            active = self._active
            if (active is not None and not active.full
                    and active.deadline - time.monotonic() > JOIN_MIN_LEFT_S):
                active.set()
                return True
            self._active = wakeup
            return False

    def may_stop(self, wakeup: Wakeup) -> bool:
        """False while a kick is pending and time is left: claim once more first."""
        with self._lock:
            if wakeup.pending and time.monotonic() < wakeup.deadline:
                return False
            self._drop(wakeup)
            return True

    def unregister(self, wakeup: Wakeup) -> None:
        with self._lock:
            self._drop(wakeup)

    def _drop(self, wakeup: Wakeup) -> None:
        if self._active is wakeup:
            self._active = None


kicked_passes = KickedPasses()


@dataclass
class PassSummary:
    claimed: int = 0
    dispatched: int = 0
    completed: int = 0
    failed: int = 0
    retries_scheduled: int = 0
    stale: int = 0
    recovered: int = 0
    jobs_finished: int = 0
    undelivered: int = 0
    joined: int = 0
    duration_ms: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Pass:
    def __init__(self, client: AsyncPostgrestClient, http: httpx.AsyncClient, base_url: str,
                 concurrency: int, batch: int, wakeup: Wakeup) -> None:
        self.client = client
        self.http = http
        self.base_url = base_url
        self.concurrency = concurrency
        self.batch = batch
        self.wakeup = wakeup
        self.summary = PassSummary()

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

    @classmethod
    def batches(cls, claimed: list[state.ClaimedStep]) -> tuple[list[Batch], list[StepOutcome]]:
        """The claimed steps grouped into one request per executor (long steps alone); a
        step that cannot be prepared is a permanent failure of its own, never the batch's."""
        failures: list[StepOutcome] = []
        groups: dict[str, list[tuple[state.ClaimedStep, bytes]]] = {}
        for step in claimed:
            if not step.transformer_type or not step.target_function:
                failures.append(step.failed(f"unknown transformer {step.transformer_id!r}",
                                            retryable=False))
                continue
            try:
                body = cls.step_request(step)
            except mapping.MappingError as exc:
                failures.append(step.failed(f"inputs: {exc}", retryable=False))
                continue
            except RecursionError:
                failures.append(step.failed("inputs: nested too deeply to send", retryable=False))
                continue
            except Exception as exc:  # noqa: BLE001 - whatever is wrong with this row is its own
                failures.append(step.failed(f"cannot prepare the step: {type(exc).__name__}: {exc}",
                                            retryable=False))
                continue
            groups.setdefault(step.target_function, []).append((step, body))
        batches: list[Batch] = []
        for target, items in groups.items():
            short = [item for item in items if item[0].timeout_s <= BATCH_MAX_TIMEOUT_S]
            batches += [Batch(target, short[i:i + MAX_BATCH]) for i in range(0, len(short), MAX_BATCH)]
            batches += [Batch(target, [item]) for item in items if item[0].timeout_s > BATCH_MAX_TIMEOUT_S]
        return batches, failures

    @staticmethod
    def step_request(step: state.ClaimedStep) -> bytes:
        """One step of an executor request, as JSON. Any failure here is this row's alone."""
        payload = step.read()
        inputs = mapping.resolve(payload.inputs,
                                 state.mapping_context(payload.input_data, payload.step_data))
        return StepRequest(
            job_id=uuid.UUID(step.job_id), step_id=step.step_id, attempt=step.attempt,
            lease_token=uuid.UUID(step.lease_token), timeout_s=step.timeout_s, inputs=inputs,
            transformer=TransformerRef(id=step.transformer_id, type=str(step.transformer_type),
                                       config=payload.transformer_config),
        ).model_dump_json().encode()

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
                await self.fail([step.failed(str(exc), retryable=exc.retryable) for step in steps])
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

    async def run(self, housekeeping_too: bool) -> PassSummary:
        deadline = self.wakeup.deadline
        # Housekeeping runs beside the first claim, not before it: a kicked pass
        # should reach its job's first step in one round trip.
        housekeeping = asyncio.create_task(
            self.housekeeping() if housekeeping_too else asyncio.sleep(0))
        inflight: dict[asyncio.Task[None], int] = {}  # a batch's task -> its steps
        kicked = self.wakeup.waiter()
        try:
            while True:
                left = deadline - time.monotonic()
                room = self.concurrency - sum(inflight.values())
                if left > 0 and room > 0:
                    self.wakeup.pending = False  # this claim sees every job started so far
                    limit = min(self.batch, room)
                    claimed = await state.claim_steps_async(self.client, limit)
                    self.summary.claimed += len(claimed)
                    batches, failures = self.batches(claimed)
                    if failures:
                        await self.fail(failures)
                    for batch in batches:
                        inflight[asyncio.create_task(self.run_batch(batch))] = len(batch.steps)
                    if len(claimed) == limit and sum(inflight.values()) < self.concurrency:
                        continue  # more may be waiting: claim again before waiting
                if not inflight:
                    due = await state.next_due_in_async(self.client) if left > 0 else None
                    if due is None or due > min(MAX_RETRY_WAIT_S, left):
                        if kicked_passes.may_stop(self.wakeup):
                            break
                        continue
                    await self.wakeup.wait(max(due, 0.02))
                    continue
                if left <= 0:
                    # Out of time: the executors still record their outcomes themselves.
                    await asyncio.wait(inflight, timeout=2.0)
                    break
                self.wakeup.full = sum(inflight.values()) >= self.concurrency
                done, _ = await asyncio.wait({*inflight, kicked}, timeout=left,
                                             return_when=asyncio.FIRST_COMPLETED)
                self.wakeup.full = False
                if kicked in done:
                    done.discard(kicked)
                    kicked = self.wakeup.waiter()
                for task in done:
                    inflight.pop(task, None)
                    if task.exception() is not None:
                        logger.error("batch task failed", exc_info=task.exception())
        finally:
            kicked.cancel()
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


async def run_pass(base_url: str, budget_s: float, concurrency: int = 32,
                   batch: int = 16, kicked: bool = False) -> PassSummary:
    """A kicked pass (start-workflow kicks one per job) joins a pass already draining
    in this process when there is one, and leaves lease recovery and stranded jobs
    to the scheduled passes, saving two RPCs per start."""
    started = time.monotonic()
    wakeup = Wakeup(started + budget_s)
    if kicked and kicked_passes.join_or_register(wakeup):
        return PassSummary(joined=1)
    limits = httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8)
    try:
        async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(30.0, connect=5.0),
                                     verify=tls.context()) as http:
            client = db.as_service_async(http)
            summary = await Pass(client, http, base_url, concurrency, batch, wakeup).run(
                housekeeping_too=not kicked)
    except (APIError, httpx.HTTPError) as exc:
        logger.error("orchestrator pass stopped: database unreachable", extra={"error": str(exc)})
        raise
    finally:
        kicked_passes.unregister(wakeup)
    summary.duration_ms = int((time.monotonic() - started) * 1000)
    return summary
