"""Throughput: completed no-op steps per second, end to end, against the raw RPC ceiling.

Each run, for a 1-step and a 3-step `transform` workflow:

1. the ceiling: trivial PostgREST RPC calls (`retry_delay`, arithmetic only, which the
   engine calls only on failures, so it does not blur the engine's RPC counts) per
   second at the load's concurrency, straight to PostgREST and through the gateway's
   /rest/v1 proxy (the path the functions take locally);
2. the load: `--jobs` jobs started through POST /workflows/start by `--concurrency`
   clients (one user each, without a rate limit), then waited for. Completed steps
   per second = completed steps / (last completion - first start request). Each
   job's start-to-completed time is the latency under this load.

A run is capped at `--cap` seconds; what is unfinished then is counted as such and
cancelled, so the next run starts from an idle stack.

    python -m bench.throughput [--jobs 2000] [--runs 3] [--concurrency 32] [--cap 60]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
from collections import Counter
from typing import Any

from bench.common import (
    HOST,
    BenchStack,
    CpuMeter,
    RawHttp,
    bench_stack,
    calls_delta,
    cancel_open_jobs,
    enable_function_stats,
    ensure_chain_workflow,
    function_calls,
    log,
    median,
    rest_headers,
    settle,
    summary_ms,
    write_result,
)
from testkit.stack import User

TRIVIAL_RPC = "/rpc/retry_delay"
TRIVIAL_BODY = b'{"p_retry": {}, "p_attempt": 1}'


async def rpc_ceiling(stack: BenchStack, port: int, prefix: str, concurrency: int,
                      seconds: float) -> dict[str, Any]:
    """Trivial RPCs per second with `concurrency` clients in a closed loop."""
    http = RawHttp(HOST, port, concurrency)
    headers = rest_headers(stack)
    latencies: list[float] = []
    errors: Counter[int] = Counter()
    body = TRIVIAL_BODY
    hdrs = {"Content-Type": "application/json", **headers}
    for _ in range(concurrency):  # open the connections before the clock starts
        await http.request("POST", prefix + TRIVIAL_RPC, body, hdrs)
    meter = CpuMeter(stack)
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < deadline:
            t = time.perf_counter()
            status, _ = await http.request("POST", prefix + TRIVIAL_RPC, body, hdrs)
            latencies.append(time.perf_counter() - t)
            if status != 200:
                errors[status] += 1

    meter.start()
    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    meter.stop()
    await http.close()
    ok = len(latencies) - sum(errors.values())
    return {"rpc_per_s": round(ok / elapsed, 1), "calls": len(latencies), "errors": dict(errors),
            "latency": summary_ms(latencies), "cpu": meter.report(ok, "call")}


async def start_jobs(stack: BenchStack, users: list[User], workflow_id: str, n_jobs: int,
                     concurrency: int, deadline: float, batch: int = 1) -> dict[str, Any]:
    """`batch` > 1 starts that many jobs per request ({"jobs": [...]})."""
    http = RawHttp(HOST, stack.cfg.api_port, concurrency)
    sent: dict[str, float] = {}
    acks: list[float] = []
    errors: Counter[str] = Counter()
    numbers = iter(range(n_jobs))

    async def worker(user: User) -> None:
        headers = {"Authorization": f"Bearer {user.token}"}
        while chunk := list(itertools.islice(numbers, batch)):
            if time.monotonic() > deadline:
                return
            t = time.time()
            t_perf = time.perf_counter()
            request: dict[str, Any] = (
                {"workflow_id": workflow_id, "input_data": {"n": chunk[0]}} if batch == 1 else
                {"jobs": [{"workflow_id": workflow_id, "input_data": {"n": n}} for n in chunk]})
            status, body = await http.post_json("/workflows/start", request, headers)
            acks.append(time.perf_counter() - t_perf)
            if status == 202 and isinstance(body, dict):
                sent[str(body["job_id"])] = t
            elif status == 200 and isinstance(body, dict) and "results" in body:
                for item in body["results"]:
                    if item["outcome"] == "created":
                        sent[str(item["job_id"])] = t
                    else:
                        errors[f"refused {item['error']['status']}"] += 1
            else:
                errors[f"HTTP {status}"] += len(chunk)

    first = time.time()
    await asyncio.gather(*(worker(users[i % len(users)]) for i in range(concurrency)))
    done = time.time()
    await http.close()
    return {"sent": sent, "acks": acks, "errors": dict(errors), "first": first, "done": done}


def wait_done(stack: BenchStack, ids: list[str], deadline_epoch: float) -> int:
    """Poll until every job is finished or the deadline; returns how many are still open."""
    with stack.db() as conn:
        while True:
            row = conn.execute(
                "select count(*) from workflow.jobs where id = any(%s::uuid[])"
                " and status not in ('completed', 'failed', 'cancelled')", (ids,)).fetchone()
            open_jobs = int(row[0]) if row else 0
            if open_jobs == 0 or time.time() > deadline_epoch:
                return open_jobs
            time.sleep(0.25)


async def load_run(stack: BenchStack, users: list[User], n_steps: int, n_jobs: int,
                   concurrency: int, cap_s: float, batch: int = 1) -> dict[str, Any]:
    workflow_id = ensure_chain_workflow(stack, n_steps)
    calls_before = function_calls(stack)
    meter = CpuMeter(stack)
    meter.start()
    t0 = time.time()
    started = await start_jobs(stack, users, workflow_id, n_jobs, concurrency,
                               time.monotonic() + cap_s, batch)
    sent: dict[str, float] = started["sent"]
    ids = list(sent)
    open_at_cap = wait_done(stack, ids, t0 + cap_s)
    meter.stop()
    rows = stack.sql(
        "select id::text, status, extract(epoch from completed_at)::float8 from workflow.jobs"
        " where id = any(%s::uuid[])", (ids,))
    steps = stack.sql(
        "select extract(epoch from completed_at)::float8 from workflow.job_steps"
        " where job_id = any(%s::uuid[]) and status = 'completed' order by completed_at", (ids,))
    cancelled = cancel_open_jobs(stack, ids) if open_at_cap else 0
    settled = settle(stack)
    calls = calls_delta(calls_before, function_calls(stack), max(len(ids), 1))
    status = Counter(r[1] for r in rows)
    done_at = [float(r[2]) for r in rows if r[1] == "completed"]
    step_times = [float(r[0]) for r in steps]
    end = max(step_times) if open_at_cap == 0 and step_times else t0 + cap_s
    elapsed = end - t0
    # The steady part: between the 10th and the 90th percentile of step completions.
    drain = 0.0
    if len(step_times) >= 20:
        a, b = step_times[len(step_times) // 10], step_times[len(step_times) * 9 // 10]
        drain = (len(step_times) * 8 // 10) / max(b - a, 1e-6)
    latencies = [float(r[2]) - sent[r[0]] for r in rows if r[1] == "completed"]
    return {
        "steps_per_job": n_steps,
        "jobs_requested": n_jobs,
        "jobs_started": len(ids),
        "start_errors": started["errors"],
        "start_phase_s": round(started["done"] - started["first"], 2),
        "starts_per_s": round(len(ids) / max(started["done"] - started["first"], 1e-6), 1),
        "start_request": summary_ms(started["acks"]),
        "jobs_status": dict(status),
        "jobs_unfinished_at_cap": open_at_cap,
        "jobs_cancelled_after_cap": cancelled,
        "steps_completed": len(step_times),
        "elapsed_s": round(elapsed, 2),
        "steps_per_s": round(len(step_times) / max(elapsed, 1e-6), 1),
        "steady_steps_per_s": round(drain, 1),
        "job_latency_under_load": summary_ms(latencies),
        "last_job_done_s": round(max(done_at) - t0, 2) if done_at else None,
        "cpu": meter.report(len(step_times) or None),
        "settled_after_s": settled,
        # What the engine asked of Postgres per job started (the functions' RPCs and the
        # SQL functions they call): the cost of a job, beyond its steps' own work.
        "sql_function_calls_per_job": calls,
    }


def print_run(label: str, run: dict[str, Any]) -> None:
    lat = run["job_latency_under_load"]
    log(f"{label}: {run['jobs_started']}/{run['jobs_requested']} jobs started "
        f"({run['starts_per_s']}/s), {run['steps_completed']} steps completed in "
        f"{run['elapsed_s']} s = {run['steps_per_s']} steps/s (steady {run['steady_steps_per_s']}); "
        f"ceiling {run['ceiling_direct']['rpc_per_s']} RPC/s direct, "
        f"{run['ceiling_gateway']['rpc_per_s']} via gateway; ratio {run['ratio_to_ceiling']:.1%}; "
        f"job latency p50 {lat['p50_ms']} ms p99 {lat['p99_ms']} ms; "
        f"unfinished at cap {run['jobs_unfinished_at_cap']}")
    log(f"  cpu ms/step: {run['cpu'].get('cpu_ms_per_step')}  cores: {run['cpu']['cores_busy']}")
    calls = run["sql_function_calls_per_job"]
    log("  rows written per job: " + ", ".join(
        f"{k.removeprefix('rows written: ')} {v}" for k, v in calls.items() if k.startswith("rows")))
    log(f"  SQL function calls per job: {run['sql_function_calls_per_job']}")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with bench_stack() as stack:
        enable_function_stats(stack)
        users = stack.create_users(args.concurrency)
        for n_steps in args.steps:
            ensure_chain_workflow(stack, n_steps)
        runs: dict[int, list[dict[str, Any]]] = {n: [] for n in args.steps}
        for i in range(args.runs):
            for n_steps in args.steps:
                waited = settle(stack)
                direct = await rpc_ceiling(stack, stack.cfg.rest_port, "", args.concurrency,
                                           args.ceiling_s)
                via_gw = await rpc_ceiling(stack, stack.cfg.api_port, "/rest/v1", args.concurrency,
                                           args.ceiling_s)
                result = await load_run(stack, users, n_steps, args.jobs, args.concurrency, args.cap,
                                        args.start_batch)
                result.update(ceiling_direct=direct, ceiling_gateway=via_gw, settled_s=waited,
                              ratio_to_ceiling=result["steps_per_s"] / max(direct["rpc_per_s"], 1e-6))
                runs[n_steps].append(result)
                print_run(f"run {i + 1}/{args.runs}, {n_steps}-step", result)
        settle(stack)
        medians = {}
        for n_steps, rs in runs.items():
            medians[f"{n_steps}_step"] = {
                "steps_per_s": median([r["steps_per_s"] for r in rs]),
                "steady_steps_per_s": median([r["steady_steps_per_s"] for r in rs]),
                "starts_per_s": median([r["starts_per_s"] for r in rs]),
                "ceiling_rpc_per_s_direct": median([r["ceiling_direct"]["rpc_per_s"] for r in rs]),
                "ceiling_rpc_per_s_gateway": median([r["ceiling_gateway"]["rpc_per_s"] for r in rs]),
                "ratio_to_ceiling": round(median([r["ratio_to_ceiling"] for r in rs]), 4),
                "job_latency_p50_ms": median([r["job_latency_under_load"]["p50_ms"] for r in rs]),
                "job_latency_p95_ms": median([r["job_latency_under_load"]["p95_ms"] for r in rs]),
                "job_latency_p99_ms": median([r["job_latency_under_load"]["p99_ms"] for r in rs]),
                "jobs_unfinished_at_cap": [r["jobs_unfinished_at_cap"] for r in rs],
            }
        return {"params": vars(args), "medians": medians,
                "runs": {f"{n}_step": rs for n, rs in runs.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=2000, help="jobs started per run (default 2000)")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 3], help="steps per job")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32,
                        help="API clients, and RPC clients of the ceiling (default 32)")
    parser.add_argument("--cap", type=float, default=60.0, help="seconds per load run at most")
    parser.add_argument("--start-batch", type=int, default=1,
                        help="jobs per start request (> 1: POST /workflows/start {\"jobs\": [...]})")
    parser.add_argument("--ceiling-s", type=float, default=3.0, help="seconds per ceiling measure")
    parser.add_argument("--result-name", default="throughput", help="bench/results/<name>.json")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    for key, m in result["medians"].items():
        log(f"median {key}: {m}")
    write_result(args.result_name, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
