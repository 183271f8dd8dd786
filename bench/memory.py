"""Memory: peak RSS of one orchestrator draining 10,000 ready steps.

10,000 one-step `transform` jobs are created with SQL, the way start_job creates them
(their steps ready at once, no kick), the pg_cron safety net is paused, and a single
orchestrator pass runs in a fresh process (as a Lambda invocation would) with the
functions' environment, dispatching to the executors of the bench stack. Its RSS is
sampled while it drains; the process reports its own peak (VmHWM) at the end.

    python -m bench.memory [--steps 10000] [--cap 180]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    BenchStack,
    CpuMeter,
    bench_stack,
    cancel_all_open,
    ensure_chain_workflow,
    log,
    settle,
    write_result,
)
from stack.config import REPO


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def seed_ready_steps(stack: BenchStack, workflow_id: str, n: int, user_id: str | None = None,
                     analyze: bool = True) -> str:
    """n jobs of `workflow_id`, steps as start_job makes them; returns their owner's id."""
    user_id = user_id or stack.create_users(1)[0].id
    stack.sql(
        """
        with v as (
          select version, definition from workflow.workflow_versions
          where workflow_id = %(wf)s order by version desc limit 1
        ), j as (
          insert into workflow.jobs (user_id, workflow_id, workflow_version, input_data, state_history)
          select %(u)s, %(wf)s, v.version, jsonb_build_object('n', g),
                 jsonb_build_array(jsonb_build_object('status', 'pending', 'at', now()))
          from generate_series(1, %(n)s) g, v
          returning id
        )
        insert into workflow.job_steps (job_id, step_id, transformer_id, depends_on, definition,
                                        max_attempts, status, next_attempt_at)
        select j.id, d.step_id, d.transformer_id, d.depends_on, d.definition, d.max_attempts,
               case when cardinality(d.depends_on) = 0 then 'ready' else 'waiting' end,
               case when cardinality(d.depends_on) = 0 then now() end
        from j, v, workflow.definition_steps(v.definition) d
        """, {"u": user_id, "wf": workflow_id, "n": n})
    if analyze:
        stack.sql("analyze workflow.jobs")
        stack.sql("analyze workflow.job_steps")
    return user_id


# The orchestrator process, as lean as a Lambda invocation: it imports the orchestrator
# and nothing of the benchmarks. argv: budget_s concurrency batch base_url out_path.
CHILD = """
import asyncio, json, os, sys
from pathlib import Path

def kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0

from shared import orchestrator
after_import = kib("VmRSS")
budget, concurrency, batch, base_url, out = sys.argv[1:6]
knobs = orchestrator.Knobs.from_settings(concurrency=int(concurrency), batch=int(batch))
summary = asyncio.run(orchestrator.run_pass(base_url, float(budget), knobs))
Path(out).write_text(json.dumps({
    "summary": summary.as_dict(), "rss_after_import_kib": after_import,
    "peak_rss_kib": kib("VmHWM"), "rss_at_end_kib": kib("VmRSS")}))
"""


def orchestrator_argv(budget_s: float, concurrency: int, batch: int, base_url: str,
                      out: Path) -> list[str]:
    return [sys.executable, "-c", CHILD, str(budget_s), str(concurrency), str(batch), base_url,
            str(out)]


def drain(stack: BenchStack, user_id: str, n: int, cap_s: float, concurrency: int,
          batch: int) -> dict[str, Any]:
    env = {**os.environ, **stack.env(), "PYTHONPATH": str(REPO)}
    count_sql = ("select count(*) from workflow.job_steps s join workflow.jobs j on j.id = s.job_id"
                 " where j.user_id = %s and s.status = 'completed'")
    meter = CpuMeter(stack)
    meter.start()
    started = time.monotonic()
    out = stack.cfg.state_dir / "bench-memory-result.json"
    out.unlink(missing_ok=True)
    log_path = stack.cfg.logs / "bench-memory-orchestrator.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            orchestrator_argv(cap_s, concurrency, batch, stack.api_url, out),
            cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    timeline: list[dict[str, float]] = []
    peak_sampled = 0
    with stack.db() as conn:
        last_sample = 0.0
        while proc.poll() is None:
            rss = rss_kib(proc.pid)
            peak_sampled = max(peak_sampled, rss)
            if time.monotonic() - last_sample >= 5:
                last_sample = time.monotonic()
                row = conn.execute(count_sql, (user_id,)).fetchone()
                done = int(row[0]) if row else 0
                timeline.append({"t_s": round(last_sample - started, 1),
                                 "rss_mib": round(rss / 1024, 1), "steps_done": done})
                log(f"  t={timeline[-1]['t_s']:6.1f}s  RSS {timeline[-1]['rss_mib']} MiB, "
                    f"{done}/{n} steps done")
            time.sleep(0.2)
    elapsed = time.monotonic() - started
    meter.stop()
    report = json.loads(out.read_text()) if out.exists() else {}
    if not report:
        log(f"the orchestrator process left no result (exit {proc.returncode}); see {log_path}")
    counted = stack.sql(count_sql, (user_id,))
    done = int(counted[0][0]) if counted else 0
    leftover = stack.sql(
        "update workflow.job_steps s set status = 'cancelled' from workflow.jobs j"
        " where j.id = s.job_id and j.user_id = %s and s.status in ('ready', 'running', 'waiting')"
        " returning s.id", (user_id,))
    stack.sql("update workflow.jobs set status = 'cancelled' where user_id = %s"
              " and status not in ('completed', 'failed', 'cancelled')", (user_id,))
    return {
        "steps_seeded": n,
        "steps_completed": done,
        "steps_left_at_cap": len(leftover),
        "elapsed_s": round(elapsed, 1),
        "steps_per_s": round(done / max(elapsed, 1e-6), 1),
        "peak_rss_mib": round(max(report.get("peak_rss_kib", 0), peak_sampled) / 1024, 1),
        "rss_after_import_mib": round(report.get("rss_after_import_kib", 0) / 1024, 1),
        "rss_at_end_mib": round(report.get("rss_at_end_kib", 0) / 1024, 1),
        "pass_summary": report.get("summary"),
        "timeline": timeline,
        "cpu": meter.report(done or None),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--cap", type=float, default=180.0,
                        help="the pass's time budget (seconds): what is not drained by then is not")
    parser.add_argument("--concurrency", type=int, default=32, help="as the orchestrator's default")
    parser.add_argument("--batch", type=int, default=16, help="as the orchestrator's default")
    args = parser.parse_args(argv)
    with bench_stack() as stack:
        workflow_id = ensure_chain_workflow(stack, 1)
        stack.set_cron(False)  # one orchestrator only
        try:
            settle(stack)
            cancel_all_open(stack)
            t = time.monotonic()
            user_id = seed_ready_steps(stack, workflow_id, args.steps)
            log(f"seeded {args.steps} ready steps in {time.monotonic() - t:.1f} s; draining "
                f"with one orchestrator (budget {args.cap:.0f} s)")
            result = drain(stack, user_id, args.steps, args.cap, args.concurrency, args.batch)
        finally:
            stack.set_cron(True)
        settle(stack)
    log(f"peak RSS {result['peak_rss_mib']} MiB (after imports {result['rss_after_import_mib']} MiB); "
        f"{result['steps_completed']}/{args.steps} steps drained in {result['elapsed_s']} s "
        f"({result['steps_per_s']} steps/s); pass: {result['pass_summary']}")
    write_result("memory", {"params": vars(args), **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
