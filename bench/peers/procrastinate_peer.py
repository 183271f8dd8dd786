"""Procrastinate as a peer: a job of N steps is a chain of N no-op tasks, each deferring
the next before it returns (Procrastinate has no workflows; chaining is how its users
run sequential steps).

Settings: 2 worker processes (as our gateway's 2) with concurrency 16 each (32 in all,
our load's concurrency); LISTEN/NOTIFY on (its default), so a deferred job wakes a
worker at once, with polling every 0.1 s as the fallback (default 5 s); async tasks; a
connection pool of 20 per worker. Jobs are deferred with `defer_async` from a pool of 32
connections, one per request.

    python -m bench.peers.procrastinate_peer   # a worker: PEER_DATABASE_URL, PEER_READY_FILE
"""

from __future__ import annotations

import asyncio
import os
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psycopg

from bench.peers.harness import Completions, PeerClient, python_module

QUEUE = "bench"
TASK = "bench_step"
WORKERS = 2
CONCURRENCY = 16
POLL_S = 0.1
POOL = 20


def _app(url: str, pool: int) -> Any:
    import procrastinate

    return procrastinate.App(connector=procrastinate.PsycopgConnector(
        conninfo=url, min_size=1, max_size=pool))


def worker() -> None:
    """One worker process, until SIGTERM (Procrastinate's own handler stops it)."""
    app = _app(os.environ["PEER_DATABASE_URL"], POOL)

    async def bench_step(chain: str, k: int, of: int) -> None:
        if k < of:
            await app.configure_task(TASK, queue=QUEUE).defer_async(chain=chain, k=k + 1, of=of)

    app.task(name=TASK, queue=QUEUE)(bench_step)

    async def run() -> None:
        async with app.open_async():
            Path(os.environ["PEER_READY_FILE"]).touch()
            await app.run_worker_async(queues=[QUEUE], concurrency=CONCURRENCY,
                                       fetch_job_polling_interval=POLL_S, listen_notify=True,
                                       name=f"worker-{os.getpid()}")

    asyncio.run(run())


class _Client:
    def __init__(self, app: Any) -> None:
        self._app = app
        self._task = app.configure_task(TASK, queue=QUEUE)

    async def start(self, key: str, n_steps: int) -> None:
        await self._task.defer_async(chain=key, k=1, of=n_steps)

    async def close(self) -> None:
        await self._app.close_async()


# A chain's last task (k = of) ends the job.
_ROWS = ("select j.args->>'chain', (j.args->>'k')::int = (j.args->>'of')::int, j.status::text,"
         " extract(epoch from e.at)::float8 from procrastinate_jobs j"
         " left join procrastinate_events e on e.job_id = j.id and e.type = 'succeeded'"
         " where j.args->>'chain' like %s")


class ProcrastinatePeer:
    name = "procrastinate"

    def version(self) -> str:
        return version("procrastinate")

    def tuning(self) -> dict[str, Any]:
        return {"worker_processes": WORKERS, "concurrency_per_worker": CONCURRENCY,
                "listen_notify": True, "fetch_job_polling_interval_s": POLL_S,
                "connection_pool_per_worker": POOL, "tasks": "async, each defers the next",
                "defer": "defer_async, one per request, 32 clients"}

    def prepare(self, url: str) -> None:
        async def apply() -> None:
            app = _app(url, 2)
            async with app.open_async():
                await app.schema_manager.apply_schema_async()

        asyncio.run(apply())

    def worker_commands(self) -> list[list[str]]:
        return [python_module("bench.peers.procrastinate_peer") for _ in range(WORKERS)]

    async def client(self, url: str, concurrency: int) -> PeerClient:
        app = _app(url, concurrency)
        await app.open_async()
        return _Client(app)

    def finished(self, conn: psycopg.Connection[Any], tag: str) -> int:
        row = conn.execute(
            "select count(*) from procrastinate_jobs where args->>'chain' like %s and"
            " ((args->>'k')::int = (args->>'of')::int and status = 'succeeded'"
            " or status in ('failed', 'aborted', 'cancelled'))", (f"{tag}-%",)).fetchone()
        return int(row[0]) if row else 0

    def completions(self, conn: psycopg.Connection[Any], tag: str) -> Completions:
        rows = conn.execute(_ROWS, (f"{tag}-%",)).fetchall()
        done = {str(r[0]): float(r[3]) for r in rows if r[1] and r[2] == "succeeded" and r[3]}
        failed = sum(1 for r in rows if r[2] in ("failed", "aborted", "cancelled"))
        steps = [float(r[3]) for r in rows if r[2] == "succeeded" and r[3] is not None]
        return Completions(done, failed, steps)

    def done_at(self, conn: psycopg.Connection[Any], key: str) -> float | None:
        row = conn.execute(
            "select extract(epoch from e.at)::float8 from procrastinate_jobs j"
            " join procrastinate_events e on e.job_id = j.id and e.type = 'succeeded'"
            " where j.args->>'chain' = %s and (j.args->>'k')::int = (j.args->>'of')::int",
            (key,), prepare=True).fetchone()
        return float(row[0]) if row else None

    def cancel(self, conn: psycopg.Connection[Any], tag: str) -> int:
        cur = conn.execute("update procrastinate_jobs set status = 'cancelled'"
                           " where args->>'chain' like %s and status = 'todo'", (f"{tag}-%",))
        return cur.rowcount


if __name__ == "__main__":
    worker()
