"""One orchestrator pass: recover, claim, resolve inputs, dispatch, and keep draining.

The pass keeps claiming steps that become ready while executors answer, so a
job moves from step to step without waiting for a cron tick. Any number of
passes may run at once: claims are SKIP LOCKED and leases fence late results.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx
from postgrest import AsyncPostgrestClient
from postgrest.exceptions import APIError

from shared import db, dispatch, mapping, state
from shared.api import logger

# Waiting for a retry that is due soon beats leaving it to the next cron tick.
MAX_RETRY_WAIT_S = 5.0


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
    duration_ms: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Pass:
    def __init__(self, client: AsyncPostgrestClient, http: httpx.AsyncClient, base_url: str,
                 concurrency: int, batch: int) -> None:
        self.client = client
        self.http = http
        self.base_url = base_url
        self.concurrency = concurrency
        self.batch = batch
        self.summary = PassSummary()

    async def finish_job(self, job: dict[str, Any]) -> None:
        """Store final_result; an output mapping that cannot resolve fails the job."""
        keys = {"job_id": job["job_id"]}
        try:
            result = state.final_result(job)
        except mapping.MappingError as exc:
            await state.fail_job(self.client, job["job_id"], f"output mapping: {exc}")
            logger.warning("job failed: output mapping", extra={**keys, "error": str(exc)})
            return
        if (await state.finish(self.client, job["job_id"], result)).get("accepted"):
            self.summary.jobs_finished += 1
            logger.info("job completed", extra=keys)

    async def finish_stranded(self) -> None:
        for job in await state.finishable(self.client):
            await self.finish_job(job)

    async def run_step(self, step: state.ClaimedStep) -> None:
        keys = step.log_keys()
        if not step.transformer_type or not step.target_function:
            await self._fail(step, f"unknown transformer {step.transformer_id!r}", retryable=False)
            return
        try:
            inputs = mapping.resolve(step.inputs, state.mapping_context(step.input_data, step.step_data))
        except mapping.MappingError as exc:
            await self._fail(step, f"inputs: {exc}", retryable=False)
            return
        payload = {
            "job_id": step.job_id, "step_id": step.step_id, "attempt": step.attempt,
            "lease_token": step.lease_token, "timeout_s": step.timeout_s, "inputs": inputs,
            "transformer": {"id": step.transformer_id, "type": step.transformer_type,
                            "config": step.transformer_config},
        }
        self.summary.dispatched += 1
        try:
            outcome = await dispatch.call_executor(
                self.http, self.base_url, step.target_function, payload, step.timeout_s + 5)
        except dispatch.DispatchError as exc:
            if exc.delivered:
                self.summary.undelivered += 1
                logger.warning("no outcome from executor; the lease will decide",
                               extra={**keys, "error": str(exc)})
            else:
                await self._fail(step, str(exc), retryable=exc.retryable)
            return
        self._count(outcome.get("outcome"))
        logger.info("step dispatched", extra={**keys, "outcome": outcome.get("outcome")})
        if outcome.get("finishable"):
            for job in await state.finishable(self.client, 1, step.job_id):
                await self.finish_job(job)

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

    async def run(self, budget_s: float, housekeeping_too: bool) -> PassSummary:
        deadline = time.monotonic() + budget_s
        # Housekeeping runs beside the first claim, not before it: a kicked pass
        # should reach its job's first step in one round trip.
        housekeeping = asyncio.create_task(
            self.housekeeping() if housekeeping_too else asyncio.sleep(0))
        inflight: set[asyncio.Task[None]] = set()
        while True:
            left = deadline - time.monotonic()
            room = self.concurrency - len(inflight)
            claimed: list[state.ClaimedStep] = []
            if left > 0 and room > 0:
                claimed = await state.claim(self.client, min(self.batch, room))
                self.summary.claimed += len(claimed)
                inflight.update(asyncio.create_task(self.run_step(s)) for s in claimed)
                if len(claimed) == min(self.batch, room) and len(inflight) < self.concurrency:
                    continue  # more may be waiting: claim again before waiting
            if not inflight:
                due = await state.next_due_in(self.client) if left > 0 else None
                if due is None or due > min(MAX_RETRY_WAIT_S, left):
                    break
                await asyncio.sleep(max(due, 0.02))
                continue
            if left <= 0:
                # Out of time: the executors still record their outcomes themselves.
                await asyncio.wait(inflight, timeout=2.0)
                break
            done, inflight = await asyncio.wait(inflight, timeout=left,
                                                return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is not None:
                    logger.error("step task failed", exc_info=task.exception())
        await housekeeping
        return self.summary

    async def housekeeping(self) -> None:
        """Expired leases become retryable failures; stranded finished jobs get finished."""
        self.summary.recovered = await state.recover_expired(self.client)
        await self.finish_stranded()


async def run_pass(base_url: str, budget_s: float, concurrency: int = 32,
                   batch: int = 16, housekeeping: bool = True) -> PassSummary:
    """`housekeeping` False (the passes start-workflow kicks, one per job) leaves lease
    recovery and stranded jobs to the scheduled passes, saving two RPCs per start."""
    started = time.monotonic()
    limits = httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(30.0, connect=5.0)) as http:
        client = db.as_service_async(http)
        try:
            summary = await Pass(client, http, base_url, concurrency, batch).run(
                budget_s, housekeeping)
        except (APIError, httpx.HTTPError) as exc:
            logger.error("orchestrator pass stopped: database unreachable", extra={"error": str(exc)})
            raise
    summary.duration_ms = int((time.monotonic() - started) * 1000)
    return summary
