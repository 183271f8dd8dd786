"""DBOS Transact as a peer: a job is a workflow of 1 or 3 no-op steps, run from a queue.

Settings (DBOS's documented way to distribute work over processes): one queue with a
global concurrency of 32 (our load's concurrency), 2 worker processes (our gateway runs
2), the queue polled every 10 ms (default 1 s: an unloaded job would wait up to a second
for its dequeue). Workflows and steps are plain synchronous functions, as in DBOS's
examples. Jobs are enqueued with DBOSClient (one enqueue per request, 32 threads), as an
API in front of DBOS would.

    python -m bench.peers.dbos_peer        # a worker: PEER_DATABASE_URL, PEER_READY_FILE
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from bench.peers.harness import Completions, PeerClient, python_module

if TYPE_CHECKING:
    from dbos import DBOSConfig, EnqueueOptions

APP = "supaflow-bench"
QUEUE = "bench"
WORKERS = 2
GLOBAL_CONCURRENCY = 32
POLL_S = 0.01
WORKFLOWS = {1: "chain1", 3: "chain3"}


def _config(url: str, executor: str) -> DBOSConfig:
    return {
        "name": APP,
        "system_database_url": url,
        # The same version on both workers, so either may dequeue any job.
        "application_version": "bench",
        "executor_id": executor,
        "log_level": "WARNING",
    }


def worker() -> None:
    """One DBOS process: launch, declare the queue, run until SIGTERM."""
    from dbos import DBOS

    def noop(n: int) -> int:
        return n

    step = DBOS.step(name="noop")(noop)

    def chain1(n: int) -> int:
        return int(step(n))

    def chain3(n: int) -> int:
        return int(step(step(step(n))))

    DBOS.workflow(name=WORKFLOWS[1])(chain1)
    DBOS.workflow(name=WORKFLOWS[3])(chain3)
    url = os.environ["PEER_DATABASE_URL"]
    DBOS(config=_config(url, f"worker-{os.getpid()}"))
    DBOS.launch()
    DBOS.register_queue(QUEUE, global_concurrency=GLOBAL_CONCURRENCY, polling_interval_sec=POLL_S,
                        on_conflict="always_update")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    Path(os.environ["PEER_READY_FILE"]).touch()
    stop.wait()
    DBOS.destroy()


class _Client:
    """DBOSClient.enqueue in a thread pool as wide as the load (asyncio's default pool
    has min(32, cores + 4) threads, which would cap 32 clients at 6)."""

    def __init__(self, url: str, concurrency: int) -> None:
        from dbos import DBOSClient

        self._pool = ThreadPoolExecutor(max_workers=concurrency)
        self._client = DBOSClient(system_database_url=url, application_name=APP,
                                  system_database_pool_size=concurrency)

    async def start(self, key: str, n_steps: int) -> None:
        options: EnqueueOptions = {"queue_name": QUEUE, "workflow_name": WORKFLOWS[n_steps],
                                   "workflow_id": key}
        await asyncio.get_running_loop().run_in_executor(self._pool, self._enqueue, options)

    def _enqueue(self, options: EnqueueOptions) -> None:
        self._client.enqueue(options, 0)

    async def close(self) -> None:
        self._client.destroy()
        self._pool.shutdown()


class DbosPeer:
    name = "dbos"

    def version(self) -> str:
        return version("dbos")

    def tuning(self) -> dict[str, Any]:
        return {"worker_processes": WORKERS, "queue_global_concurrency": GLOBAL_CONCURRENCY,
                "queue_polling_interval_s": POLL_S, "workflows": "synchronous functions",
                "enqueue": "DBOSClient.enqueue, one per request, 32 threads",
                "log_level": "WARNING"}

    def prepare(self, url: str) -> None:
        """The system tables, as `dbos migrate` creates them: here, so that the two
        workers do not both migrate at their launch."""
        from dbos import DBOS

        DBOS.migrate(url, schema="dbos")

    def worker_commands(self) -> list[list[str]]:
        return [python_module("bench.peers.dbos_peer") for _ in range(WORKERS)]

    async def client(self, url: str, concurrency: int) -> PeerClient:
        return await asyncio.to_thread(_Client, url, concurrency)

    def finished(self, conn: psycopg.Connection[Any], tag: str) -> int:
        row = conn.execute(
            "select count(*) from dbos.workflow_status where workflow_uuid like %s"
            " and status in ('SUCCESS', 'ERROR', 'CANCELLED', 'MAX_RECOVERY_ATTEMPTS_EXCEEDED')",
            (f"{tag}-%",)).fetchone()
        return int(row[0]) if row else 0

    def completions(self, conn: psycopg.Connection[Any], tag: str) -> Completions:
        rows = conn.execute(
            "select workflow_uuid, status, completed_at from dbos.workflow_status"
            " where workflow_uuid like %s", (f"{tag}-%",)).fetchall()
        steps = conn.execute(
            "select completed_at_epoch_ms from dbos.operation_outputs where workflow_uuid like %s"
            " and function_name = 'noop' and error is null", (f"{tag}-%",)).fetchall()
        done = {str(r[0]): int(r[2]) / 1000 for r in rows if r[1] == "SUCCESS" and r[2] is not None}
        failed = sum(1 for r in rows if r[1] not in ("SUCCESS", "ENQUEUED", "PENDING"))
        return Completions(done, failed, [int(r[0]) / 1000 for r in steps if r[0] is not None])

    def done_at(self, conn: psycopg.Connection[Any], key: str) -> float | None:
        row = conn.execute("select status, completed_at from dbos.workflow_status"
                           " where workflow_uuid = %s", (key,), prepare=True).fetchone()
        if row and row[0] == "SUCCESS" and row[1] is not None:
            return int(row[1]) / 1000
        return None

    def cancel(self, conn: psycopg.Connection[Any], tag: str) -> int:
        cur = conn.execute(
            "update dbos.workflow_status set status = 'CANCELLED' where workflow_uuid like %s"
            " and status in ('ENQUEUED', 'PENDING')", (f"{tag}-%",))
        return cur.rowcount


if __name__ == "__main__":
    worker()
