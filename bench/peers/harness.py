"""What both peers share: a database of their own, worker processes, CPU per process
tree from /proc, and the two workloads (N jobs with 32 clients; sequential probes).

The workloads mirror bench.throughput and bench.latency: `concurrency` clients each
start one job per request in a closed loop, then the benchmark waits for every job;
completed steps per second = completed steps / (last step completion - first start
request). A probe is a 3-step job timed from just before its start request to the
completion time the peer recorded in Postgres, polled every 2 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from bench.common import ProcessMeter, log, machine_cpu, proc_cpu, summary_ms, tree_cpu
from stack.config import REPO

# Databases ---------------------------------------------------------------------------

def database_url(cluster_url: str, dbname: str) -> str:
    """The cluster's URL (as the bench stack gives it) pointed at another database."""
    parts = urlsplit(cluster_url)
    return urlunsplit(parts._replace(path=f"/{dbname}"))


@contextlib.contextmanager
def own_database(cluster_url: str, dbname: str) -> Iterator[str]:
    """A fresh database for one peer on the bench cluster; dropped on the way out, even
    when a worker still holds a connection (WITH (FORCE))."""
    ident = sql.Identifier(dbname)
    with psycopg.connect(cluster_url, autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(ident))
        conn.execute(sql.SQL("create database {}").format(ident))
    try:
        yield database_url(cluster_url, dbname)
    finally:
        with psycopg.connect(cluster_url, autocommit=True) as conn:
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(ident))


# CPU per process tree -------------------------------------------------------------------

class TreeMeter(ProcessMeter):
    """CPU seconds of named process trees, as bench.common's CpuMeter does for our stack:
    here the peer's workers, Postgres (the postmaster and every backend, live or exited)
    and this process (the load client)."""

    def __init__(self, trees: dict[str, list[int]]) -> None:
        super().__init__()
        self.trees = trees
        self.parts = (*trees, "bench_client")

    def _sample(self) -> dict[str, float]:
        out = {name: sum(tree_cpu(p) for p in pids) for name, pids in self.trees.items()}
        out["bench_client"] = proc_cpu(os.getpid())  # workers are our children: not waited for here
        out["machine_busy"] = machine_cpu()[0]
        return out

    def report(self, per: float | None = None, unit: str = "step") -> dict[str, Any]:
        """As ProcessMeter's, with the sum of every process (`all_processes`)."""
        out = super().report(per, unit)
        if per:
            ms = out[f"cpu_ms_per_{unit}"]
            ms["all_processes"] = round(sum(ms[k] for k in self.parts), 3)
        return out


# Workers -------------------------------------------------------------------------------

@contextlib.contextmanager
def workers(commands: list[list[str]], env: dict[str, str], log_dir: Path,
            ready_timeout_s: float = 60.0) -> Iterator[list[int]]:
    """Start the peer's worker processes; each touches the file named by
    PEER_READY_FILE once it takes work. They are stopped (SIGTERM, then SIGKILL after
    15 s) on the way out, whatever happens: a benchmark never leaves one running."""
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    ready = [log_dir / f"ready-{i}" for i in range(len(commands))]
    try:
        for i, cmd in enumerate(commands):
            ready[i].unlink(missing_ok=True)
            with (log_dir / f"worker-{i}.log").open("wb") as out:
                procs.append(subprocess.Popen(
                    cmd, cwd=REPO, env={**env, "PEER_READY_FILE": str(ready[i])},
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        deadline = time.monotonic() + ready_timeout_s
        while not all(r.exists() for r in ready):
            dead = [p.args for p in procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"peer workers not ready (exited: {dead}); see {log_dir}")
            time.sleep(0.05)
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def settle(pids: list[int], max_wait_s: float = 5.0, idle_cores: float = 0.3) -> float:
    """Wait until the workers are idle, so one workload does not pay for the last. Idle
    is below 0.3 cores: DBOS's workers poll their queue every 10 ms even then."""
    started = time.monotonic()
    while time.monotonic() - started < max_wait_s:
        before = sum(tree_cpu(p) for p in pids)
        time.sleep(0.5)
        if (sum(tree_cpu(p) for p in pids) - before) / 0.5 < idle_cores:
            break
    return round(time.monotonic() - started, 1)


# The peer's side -------------------------------------------------------------------------

class PeerClient(Protocol):
    async def start(self, key: str, n_steps: int) -> None:
        """Start one job of `n_steps` chained no-op steps, named `key`."""

    async def close(self) -> None: ...


@dataclass
class Completions:
    jobs_done: dict[str, float]  # job key -> completion (epoch s), completed jobs only
    jobs_failed: int
    step_times: list[float]  # completion (epoch s) of every completed step


class Peer(Protocol):
    name: str

    def version(self) -> str: ...

    def tuning(self) -> dict[str, Any]:
        """What was set for this peer, and why: goes into the results."""

    def prepare(self, url: str) -> None:
        """Install the peer's schema in its fresh database."""

    def worker_commands(self) -> list[list[str]]: ...

    async def client(self, url: str, concurrency: int) -> PeerClient: ...

    def finished(self, conn: psycopg.Connection[Any], tag: str) -> int:
        """Jobs whose key starts with `tag` that are finished, whatever the outcome."""

    def completions(self, conn: psycopg.Connection[Any], tag: str) -> Completions: ...

    def done_at(self, conn: psycopg.Connection[Any], key: str) -> float | None:
        """When job `key` completed (epoch s), as the peer recorded it; None if not yet."""

    def cancel(self, conn: psycopg.Connection[Any], tag: str) -> int:
        """Cancel what a capped workload left, so it does not load the next one."""


# The workloads ----------------------------------------------------------------------------

async def _start_all(client: PeerClient, tag: str, n_steps: int, n_jobs: int, concurrency: int,
                     deadline: float) -> tuple[dict[str, float], list[float], int, float, float]:
    sent: dict[str, float] = {}
    acks: list[float] = []
    errors = 0
    numbers = iter(range(n_jobs))

    async def worker() -> None:
        nonlocal errors
        for i in numbers:
            if time.monotonic() > deadline:
                return
            key = f"{tag}-{i}"
            t, t_perf = time.time(), time.perf_counter()
            try:
                await client.start(key, n_steps)
            except Exception as exc:  # noqa: BLE001 - counted and reported, the load goes on
                errors += 1
                if errors <= 3:
                    log(f"  start failed: {exc!r}")
                continue
            acks.append(time.perf_counter() - t_perf)
            sent[key] = t

    first = time.time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sent, acks, errors, first, time.time()


def throughput_run(peer: Peer, url: str, pids: list[int], postmaster: int, tag: str, n_steps: int,
                   n_jobs: int, concurrency: int, cap_s: float) -> dict[str, Any]:
    """`n_jobs` jobs of `n_steps` steps started by `concurrency` clients, waited for."""
    settled = settle(pids)
    meter = TreeMeter({"workers": pids, "postgres": [postmaster]})

    async def load() -> tuple[dict[str, float], list[float], int, float, float]:
        client = await peer.client(url, concurrency)
        try:
            return await _start_all(client, tag, n_steps, n_jobs, concurrency,
                                    time.monotonic() + cap_s)
        finally:
            await client.close()

    meter.start()
    t0 = time.time()
    sent, acks, errors, first, done = asyncio.run(load())
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            open_jobs = len(sent) - peer.finished(conn, tag)
            if open_jobs <= 0 or time.time() > t0 + cap_s:
                break
            time.sleep(0.25)
        meter.stop()
        comp = peer.completions(conn, tag)
        cancelled = peer.cancel(conn, tag) if open_jobs > 0 else 0
    steps = sorted(comp.step_times)
    end = steps[-1] if open_jobs <= 0 and steps else t0 + cap_s
    elapsed = end - t0
    steady = 0.0
    if len(steps) >= 20:  # between the 10th and the 90th percentile of step completions
        a, b = steps[len(steps) // 10], steps[len(steps) * 9 // 10]
        steady = (len(steps) * 8 // 10) / max(b - a, 1e-6)
    latencies = [at - sent[k] for k, at in comp.jobs_done.items() if k in sent]
    return {
        "steps_per_job": n_steps,
        "jobs_requested": n_jobs,
        "jobs_started": len(sent),
        "start_errors": errors,
        "starts_per_s": round(len(sent) / max(done - first, 1e-6), 1),
        "start_request": summary_ms(acks),
        "jobs_completed": len(comp.jobs_done),
        "jobs_failed": comp.jobs_failed,
        "jobs_unfinished_at_cap": max(open_jobs, 0),
        "jobs_cancelled_after_cap": cancelled,
        "steps_completed": len(steps),
        "elapsed_s": round(elapsed, 2),
        "steps_per_s": round(len(steps) / max(elapsed, 1e-6), 1),
        "steady_steps_per_s": round(steady, 1),
        "job_latency_under_load": summary_ms(latencies),
        "cpu": meter.report(len(steps) or None),
        "settled_before_s": settled,
    }


def latency_run(peer: Peer, url: str, pids: list[int], tag: str, probes: int, warmup: int,
                max_s: float) -> dict[str, Any]:
    """Sequential 3-step probes, nothing else running."""
    settle(pids)
    latencies: list[float] = []
    observed: list[float] = []

    async def go() -> None:
        client = await peer.client(url, 1)
        stop_at = time.monotonic() + max_s
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                for i in itertools.count():
                    if i >= warmup + probes or (time.monotonic() > stop_at and len(latencies) >= 10):
                        break
                    key = f"{tag}-{i}"
                    t0 = time.time()
                    await client.start(key, 3)
                    deadline = time.monotonic() + 30
                    done: float | None = None
                    while time.monotonic() < deadline:
                        done = peer.done_at(conn, key)
                        if done is not None:
                            break
                        await asyncio.sleep(0.002)
                    if done is None:
                        raise RuntimeError(f"{peer.name} probe {key} did not complete in 30 s")
                    if i >= warmup:
                        latencies.append(done - t0)
                        observed.append(time.time() - t0)
        finally:
            await client.close()

    asyncio.run(go())
    return {"start_to_completed": summary_ms(latencies), "observed_by_poll": summary_ms(observed)}


def run_peer(peer: Peer, cluster_url: str, postmaster: int, state_dir: Path, round_tag: str,
             n_jobs: int, concurrency: int, cap_s: float, probes: int,
             steps: tuple[int, ...] = (1, 3)) -> dict[str, Any]:
    """One round of one peer: its own database and workers, a warm-up, the unloaded
    probes, then the load for each job shape; everything stopped and dropped at the end."""
    dbname = f"bench_peer_{peer.name}"
    out: dict[str, Any] = {"version": peer.version(), "tuning": peer.tuning()}
    with own_database(cluster_url, dbname) as url:
        peer.prepare(url)
        env = {**os.environ, "PEER_DATABASE_URL": url, "PYTHONPATH": str(REPO)}
        with workers(peer.worker_commands(), env, state_dir / "peers" / peer.name) as pids:
            postgres = [postmaster]
            log(f"{peer.name} {out['version']}: {len(pids)} workers up (pids {pids}); "
                f"postgres {postgres}")
            # Warm-up: the workers' first jobs open connections and load code.
            warm = throughput_run(peer, url, pids, postmaster, f"{round_tag}w", 3, 50, concurrency, 30)
            log(f"  warm-up: {warm['jobs_completed']}/50 jobs")
            # Probes before the loads: the peers' tables are small then, as ours are not
            # (the benchmark's 2 ms poll reads by job key, which only DBOS indexes).
            if probes:
                lr = latency_run(peer, url, pids, f"{round_tag}p", probes, 5, 40)
                out["unloaded"] = lr
                s = lr["start_to_completed"]
                log(f"  unloaded 3-step: p50 {s['p50_ms']} ms, p95 {s['p95_ms']} ms, "
                    f"p99 {s['p99_ms']} ms (n={s['n']})")
            for n_steps in steps:
                r = throughput_run(peer, url, pids, postmaster, f"{round_tag}s{n_steps}", n_steps,
                                   n_jobs, concurrency, cap_s)
                out[f"{n_steps}_step"] = r
                lat = r["job_latency_under_load"]
                log(f"  {n_steps}-step: {r['jobs_completed']}/{r['jobs_requested']} jobs, "
                    f"{r['steps_completed']} steps in {r['elapsed_s']} s = {r['steps_per_s']} steps/s "
                    f"(steady {r['steady_steps_per_s']}); starts {r['starts_per_s']}/s; "
                    f"job p50 {lat['p50_ms']} ms p99 {lat['p99_ms']} ms; unfinished at cap "
                    f"{r['jobs_unfinished_at_cap']}; cpu ms/step {r['cpu'].get('cpu_ms_per_step')}")
    return out


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]
