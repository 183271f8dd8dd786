"""Latency: start to `completed` of a 3-step `transform` job, unloaded and under load.

A probe job is timed from just before its POST /workflows/start to its `completed_at`
(Postgres and this process share the machine's clock).

- Unloaded: one probe at a time, the next one started when the previous is done.
- Under load: the throughput benchmark's load (API clients starting 1-step jobs in a
  closed loop) runs for `--load-s` seconds while a probe is started every
  `--probe-every-ms`, without waiting for the previous one. What is unfinished
  `--cap` seconds after the load began is reported as such and cancelled.

    python -m bench.latency [--runs 3] [--probes 60] [--max-s 45] [--load-s 20] [--cap 50]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from bench.common import (
    HOST,
    BenchStack,
    CpuMeter,
    RawHttp,
    bench_stack,
    cancel_open_jobs,
    ensure_chain_workflow,
    log,
    median,
    settle,
    summary_ms,
    write_result,
)
from bench.throughput import start_jobs
from testkit.jobs import TERMINAL
from testkit.stack import User

PROBE_STEPS = 3


async def start_probe(http: RawHttp, user: User, workflow_id: str, n: int) -> tuple[str, float]:
    t = time.time()
    status, body = await http.post_json(
        "/workflows/start", {"workflow_id": workflow_id, "input_data": {"n": n}},
        {"Authorization": f"Bearer {user.token}"})
    if status != 202 or not isinstance(body, dict):
        raise RuntimeError(f"start failed: HTTP {status} {body}")
    return str(body["job_id"]), t


def unloaded_run(stack: BenchStack, user: User, workflow_id: str, probes: int,
                 warmup: int, max_s: float) -> dict[str, Any]:
    """Sequential probes; `observed` is when a 2 ms poll of Postgres first saw `completed`."""
    latencies: list[float] = []
    observed: list[float] = []
    db_side: list[float] = []
    ack: list[float] = []
    job_ids: list[str] = []

    async def go() -> None:
        http = RawHttp(HOST, stack.cfg.api_port, 1)
        stop_at = time.monotonic() + max_s
        with stack.db() as conn:
            for i in range(warmup + probes):
                if time.monotonic() > stop_at and len(latencies) >= 10:
                    break
                t_perf = time.perf_counter()
                job_id, t0 = await start_probe(http, user, workflow_id, i)
                acked = time.perf_counter() - t_perf
                deadline = time.monotonic() + 60
                row: Any = None
                while time.monotonic() < deadline:
                    row = conn.execute(
                        "select status, extract(epoch from completed_at)::float8,"
                        " extract(epoch from completed_at - created_at)::float8"
                        " from workflow.jobs where id = %s", (job_id,), prepare=True).fetchone()
                    if row and row[0] in TERMINAL:
                        break
                    await asyncio.sleep(0.002)
                seen = time.time()
                if not row or row[0] != "completed":
                    raise RuntimeError(f"probe {job_id} did not complete: {row}")
                if i >= warmup:
                    ack.append(acked)
                    job_ids.append(job_id)
                    latencies.append(float(row[1]) - t0)
                    observed.append(seen - t0)
                    db_side.append(float(row[2]))
        await http.close()

    asyncio.run(go())
    return {"start_to_completed": summary_ms(latencies), "observed_by_poll": summary_ms(observed),
            "created_to_completed_in_db": summary_ms(db_side), "start_request": summary_ms(ack),
            "phases": phases(stack, job_ids)}


def phases(stack: BenchStack, job_ids: list[str]) -> dict[str, dict[str, float]]:
    """Where a probe's time goes, from the timestamps Postgres recorded: job created ->
    s1 claimed -> s1 completed -> s2 claimed ... -> s3 completed -> job completed."""
    rows = stack.sql(
        "select j.id::text, extract(epoch from j.created_at)::float8,"
        " extract(epoch from j.completed_at)::float8, s.step_id,"
        " extract(epoch from s.started_at)::float8, extract(epoch from s.completed_at)::float8"
        " from workflow.jobs j join workflow.job_steps s on s.job_id = j.id"
        " where j.id = any(%s::uuid[]) order by j.id, s.step_id", (job_ids,))
    jobs: dict[str, dict[str, Any]] = {}
    for job_id, created, completed, step_id, started, done in rows:
        job = jobs.setdefault(job_id, {"created": created, "completed": completed, "steps": {}})
        job["steps"][step_id] = (started, done)
    spans: dict[str, list[float]] = {}
    for job in jobs.values():
        previous, label = job["created"], "created"
        for k in range(1, PROBE_STEPS + 1):
            started, done = job["steps"][f"s{k}"]
            spans.setdefault(f"{label} -> s{k} claimed", []).append(started - previous)
            spans.setdefault(f"s{k} claimed -> completed", []).append(done - started)
            previous, label = done, f"s{k} completed"
        spans.setdefault(f"{label} -> job completed", []).append(job["completed"] - previous)
    return {name: {"p50_ms": round(median(v) * 1000, 2)} for name, v in spans.items()}


def loaded_run(stack: BenchStack, users: list[User], probe_user: User, load_wf: str,
               probe_wf: str, concurrency: int, load_s: float, probe_every_s: float,
               cap_s: float) -> dict[str, Any]:
    probes: dict[str, float] = {}
    meter = CpuMeter(stack)

    async def probe_loop(deadline: float) -> None:
        """A probe every `probe_every_s`, whether or not the previous start has answered."""
        http = RawHttp(HOST, stack.cfg.api_port, 64)

        async def one(n: int) -> None:
            job_id, t0 = await start_probe(http, probe_user, probe_wf, n)
            probes[job_id] = t0

        tasks = []
        n = 0
        while time.monotonic() < deadline:
            tasks.append(asyncio.create_task(one(n)))
            n += 1
            await asyncio.sleep(probe_every_s)
        await asyncio.gather(*tasks)
        await http.close()

    async def go() -> dict[str, Any]:
        deadline = time.monotonic() + load_s
        load: dict[str, Any] = (await asyncio.gather(
            start_jobs(stack, users, load_wf, 10**9, concurrency, deadline),
            probe_loop(deadline)))[0]
        return load

    meter.start()
    t0 = time.time()
    load = asyncio.run(go())
    load_ids = list(load["sent"])
    ids = list(probes)
    # Wait for the probes (only), up to the cap.
    rows: list[tuple[Any, ...]] = []
    with stack.db() as conn:
        while True:
            rows = conn.execute(
                "select id::text, status, extract(epoch from completed_at)::float8"
                " from workflow.jobs where id = any(%s::uuid[])", (ids,)).fetchall()
            unfinished = sum(1 for r in rows if r[1] not in TERMINAL)
            if unfinished == 0 or time.time() > t0 + cap_s:
                break
            time.sleep(0.25)
    meter.stop()
    cancelled = cancel_open_jobs(stack, ids + load_ids)
    latencies = [float(r[2]) - probes[r[0]] for r in rows if r[1] == "completed"]
    return {
        "probes_started": len(ids),
        "probes_completed": len(latencies),
        "probes_unfinished_at_cap": len(ids) - len(latencies),
        "load_jobs_started": len(load_ids),
        "load_starts_per_s": round(len(load_ids) / load_s, 1),
        "jobs_cancelled_after": cancelled,
        "start_to_completed": summary_ms(latencies),
        "cpu": meter.report(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--probes", type=int, default=60, help="unloaded probes per run")
    parser.add_argument("--max-s", type=float, default=45.0,
                        help="stop an unloaded run after this long (with at least 10 probes)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32, help="load clients (as throughput)")
    parser.add_argument("--load-s", type=float, default=20.0, help="seconds of load per run")
    parser.add_argument("--probe-every-ms", type=float, default=250.0)
    parser.add_argument("--cap", type=float, default=50.0, help="seconds per loaded run at most")
    parser.add_argument("--skip-loaded", action="store_true")
    args = parser.parse_args(argv)

    with bench_stack() as stack:
        users = stack.create_users(args.concurrency + 1)
        probe_user, load_users = users[0], users[1:]
        probe_wf = ensure_chain_workflow(stack, PROBE_STEPS)
        load_wf = ensure_chain_workflow(stack, 1)
        unloaded: list[dict[str, Any]] = []
        loaded: list[dict[str, Any]] = []
        for i in range(args.runs):
            settle(stack)
            r = unloaded_run(stack, probe_user, probe_wf, args.probes, args.warmup, args.max_s)
            unloaded.append(r)
            s = r["start_to_completed"]
            log(f"unloaded run {i + 1}/{args.runs}: p50 {s['p50_ms']} ms, p95 {s['p95_ms']} ms, "
                f"p99 {s['p99_ms']} ms (n={s['n']}); in Postgres, created to completed: "
                f"p50 {r['created_to_completed_in_db']['p50_ms']} ms")
            log(f"  phases (p50 ms): { {k: v['p50_ms'] for k, v in r['phases'].items()} }")
        if not args.skip_loaded:
            for i in range(args.runs):
                settle(stack)
                r = loaded_run(stack, load_users, probe_user, load_wf, probe_wf, args.concurrency,
                               args.load_s, args.probe_every_ms / 1000, args.cap)
                loaded.append(r)
                s = r["start_to_completed"]
                log(f"loaded run {i + 1}/{args.runs}: p50 {s['p50_ms']} ms, p95 {s['p95_ms']} ms, "
                    f"p99 {s['p99_ms']} ms (n={s['n']}, unfinished at cap "
                    f"{r['probes_unfinished_at_cap']}); load: {r['load_starts_per_s']} starts/s")
        settle(stack)

    def med(rs: list[dict[str, Any]], key: str) -> dict[str, float]:
        return {p: median([r[key][p] for r in rs]) for p in ("p50_ms", "p95_ms", "p99_ms")}

    medians: dict[str, Any] = {"unloaded": med(unloaded, "start_to_completed"),
                               "unloaded_in_db": med(unloaded, "created_to_completed_in_db")}
    if loaded:
        medians["loaded"] = med(loaded, "start_to_completed")
        medians["loaded_unfinished_at_cap"] = [r["probes_unfinished_at_cap"] for r in loaded]
    log(f"medians over {args.runs} runs: {medians}")
    write_result("latency", {"params": vars(args), "medians": medians,
                             "runs": {"unloaded": unloaded, "loaded": loaded}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
