"""One orchestrator pass: recover, claim, resolve inputs, dispatch, and keep draining.

The pass keeps claiming steps that become ready while executors answer, so a
job moves from step to step without waiting for a cron tick. Any number of
passes may run at once: claims are SKIP LOCKED and leases fence late results.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx
from postgrest import AsyncPostgrestClient
from postgrest.exceptions import APIError

from shared import db, dispatch, mapping, state, tls
from shared.log import logger

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

    async def finish_job(self, job: dict[str, Any]) -> None:
        """One job's finish; a failure here (other than the database being down) is logged
        and left to the next scheduled pass, never the end of this pass."""
        try:
            outcome = await state.finish_async(self.client, job)
        except (APIError, httpx.HTTPError):
            raise
        except Exception:  # noqa: BLE001 - one job's bad data must not stop the pass
            logger.exception("finishing a job failed", extra={"job_id": job.get("job_id")})
            return
        if outcome == "completed":
            self.summary.jobs_finished += 1
        if outcome:
            logger.info(f"job {outcome}", extra={"job_id": job["job_id"]})

    async def finish_stranded(self) -> None:
        for job in await state.finishable(self.client):
            await self.finish_job(job)

    async def run_step(self, step: state.ClaimedStep) -> None:
        keys = step.log_keys()
        if not step.transformer_type or not step.target_function:
            await self._fail(step, f"unknown transformer {step.transformer_id!r}", retryable=False)
            return
        try:
            request = self.executor_request(step)
        except mapping.MappingError as exc:
            await self._fail(step, f"inputs: {exc}", retryable=False)
            return
        except RecursionError:
            await self._fail(step, "inputs: nested too deeply to send", retryable=False)
            return
        except Exception as exc:  # noqa: BLE001 - whatever is wrong with this row is its own
            await self._fail(step, f"cannot prepare the step: {type(exc).__name__}: {exc}",
                             retryable=False)
            return
        self.summary.dispatched += 1
        try:
            outcome = await dispatch.call_executor(
                self.http, self.base_url, step.target_function, request, step.timeout_s + 5)
        except dispatch.DispatchError as exc:
            if exc.delivered:
                self.summary.undelivered += 1
                logger.warning("no outcome from executor; the lease will decide",
                               extra={**keys, "error": str(exc)})
            else:
                await self._fail(step, str(exc), retryable=exc.retryable)
            return
        self._count(outcome.get("outcome"))
        logger.debug("step dispatched", extra={**keys, "outcome": outcome.get("outcome")})
        if outcome.get("finishable"):  # the executor could not finish the job itself
            for job in await state.finishable(self.client, 1, step.job_id):
                await self.finish_job(job)

    @staticmethod
    def executor_request(step: state.ClaimedStep) -> bytes:
        """The executor's request body. Any failure here is this row's alone: the caller
        fails this step for good and the batch goes on."""
        payload = step.read()
        inputs = mapping.resolve(payload.inputs,
                                 state.mapping_context(payload.input_data, payload.step_data))
        return json.dumps({
            "job_id": step.job_id, "step_id": step.step_id, "attempt": step.attempt,
            "lease_token": step.lease_token, "timeout_s": step.timeout_s, "inputs": inputs,
            "transformer": {"id": step.transformer_id, "type": step.transformer_type,
                            "config": payload.transformer_config},
        }, allow_nan=False).encode()

    def _count(self, outcome: Any) -> None:
        if outcome == "completed":
            self.summary.completed += 1
        elif outcome == "retry_scheduled":
            self.summary.retries_scheduled += 1
        elif outcome == "failed":
            self.summary.failed += 1
        elif outcome == "stale":
            self.summary.stale += 1

    async def _fail(self, step: state.ClaimedStep, error: str, *, retryable: bool) -> None:
        result = await state.fail_async(self.client, step, error, retryable)
        self._count("retry_scheduled" if result.get("retry_at") else
                    "failed" if result.get("accepted") else "stale")
        logger.warning("step failed before dispatch", extra={**step.log_keys(), "error": error})

    async def run(self, housekeeping_too: bool) -> PassSummary:
        deadline = self.wakeup.deadline
        # Housekeeping runs beside the first claim, not before it: a kicked pass
        # should reach its job's first step in one round trip.
        housekeeping = asyncio.create_task(
            self.housekeeping() if housekeeping_too else asyncio.sleep(0))
        inflight: set[asyncio.Task[None]] = set()
        kicked = self.wakeup.waiter()
        try:
            while True:
                left = deadline - time.monotonic()
                room = self.concurrency - len(inflight)
                if left > 0 and room > 0:
                    self.wakeup.pending = False  # this claim sees every job started so far
                    claimed = await state.claim(self.client, min(self.batch, room))
                    self.summary.claimed += len(claimed)
                    inflight.update(asyncio.create_task(self.run_step(s)) for s in claimed)
                    if len(claimed) == min(self.batch, room) and len(inflight) < self.concurrency:
                        continue  # more may be waiting: claim again before waiting
                if not inflight:
                    due = await state.next_due_in(self.client) if left > 0 else None
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
                self.wakeup.full = len(inflight) >= self.concurrency
                done, _ = await asyncio.wait(inflight | {kicked}, timeout=left,
                                             return_when=asyncio.FIRST_COMPLETED)
                self.wakeup.full = False
                if kicked in done:
                    done.discard(kicked)
                    kicked = self.wakeup.waiter()
                inflight.difference_update(done)
                for task in done:
                    if task.exception() is not None:
                        logger.error("step task failed", exc_info=task.exception())
        finally:
            kicked.cancel()
        await housekeeping
        return self.summary

    async def housekeeping(self) -> None:
        """Expired leases become retryable failures; stranded finished jobs get finished."""
        self.summary.recovered = await state.recover_expired(self.client)
        await self.finish_stranded()


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
