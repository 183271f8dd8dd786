"""Profile: where the CPU goes, with py-spy, in the two Python processes that do the work.

- `--target gateway` (default): every function of the local stack, and its /rest/v1
  proxy to PostgREST, runs in the one gateway process. This runs the throughput load
  (1-step jobs by default) and samples the gateway, only the thread holding the GIL
  (the CPU the process actually uses), then sorts the samples by which part of the
  stack they belong to and by the hottest frames.
- `--target orchestrator`: one orchestrator pass draining ready steps in a process of
  its own (as bench.memory runs it), sampled from start to end.

Needs py-spy, which is not a project dependency: `.venv/bin/pip install py-spy`.
Not part of `make bench`.

    python -m bench.profile [--target gateway|orchestrator] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import (
    RESULTS_DIR,
    bench_stack,
    cancel_all_open,
    ensure_chain_workflow,
    log,
    write_result,
)
from bench.memory import orchestrator_argv, seed_ready_steps
from stack.config import REPO

# The first marker found in a stack, from its root, names the part it belongs to.
PARTS: list[tuple[str, str]] = [
    ("rest_proxy", "gateway: /rest/v1 proxy to PostgREST"),
    ("start_workflow", "function: start-workflow"),
    ("shared/start.py", "function: start-workflow"),
    ("_run_pass", "function: orchestrator"),
    ("shared/orchestrator.py", "function: orchestrator"),
    ("shared/executors/", "function: execute-transform"),
    ("get_job", "function: get-job / list-jobs"),
    ("list_jobs", "function: get-job / list-jobs"),
    ("_function_endpoint", "gateway: v2 event / thread hand-off"),
    ("uvicorn/", "gateway: HTTP server (uvicorn, starlette)"),
]
# Hot spots worth naming wherever they occur in a stack.
HOT: list[tuple[str, str]] = [
    ("current_async_library (httpcore", "httpcore: `import sniffio` fails on every call (not installed)"),
    ("create_default_context (ssl.py", "ssl.create_default_context (a new httpx client)"),
    ("has_expired (httpcore", "httpcore: pool scans every connection for expiry"),
    ("aws_lambda_powertools/logging", "Powertools logger (JSON log lines)"),
    ("logging/__init__.py", "stdlib logging"),
    ("pydantic", "pydantic validation"),
    ("jwt/", "PyJWT"),
    ("json/", "json encode/decode"),
    ("postgrest/", "calls through postgrest-py (incl. their HTTP)"),
]

# Inside an orchestrator pass: which call a sample is part of (first match, leaf first).
ORCHESTRATOR_CALLS: list[tuple[str, str]] = [
    ("create_default_context (ssl.py", "new httpx client (ssl context)"),
    ("call_executor (shared/dispatch.py", "dispatch: POST to the executor"),
    ("claim_steps_async (shared/state.py", "RPC claim_steps"),
    ("record_outcomes_async (shared/state.py", "RPC record_outcomes"),
    ("finishable_jobs_async (shared/state.py", "RPC finishable_jobs"),
    ("finish_jobs_async (shared/state.py", "RPC finish_jobs"),
    ("recover_expired_leases_async (shared/state.py", "RPC recover_expired_leases"),
    ("next_due_in_async (shared/state.py", "RPC next_due_in"),
    ("mapping.py", "input mapping"),
    ("logging", "logging"),
    ("_run_once (asyncio", "event loop"),
]


def py_spy() -> str | None:
    return shutil.which("py-spy") or next(
        (str(p) for p in [REPO / ".venv" / "bin" / "py-spy"] if p.exists()), None)


def summarise(raw: Path) -> dict[str, Any]:
    parts: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    hot: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        part = next((name for marker, name in PARTS if marker in stack), "unattributed")
        parts[part] += n
        for marker, name in HOT:
            if marker in stack:
                hot[name] += n
        leaf[stack.rsplit(";", 1)[-1]] += n
        calls[next((name for marker, name in ORCHESTRATOR_CALLS if marker in stack), "other")] += n

    def pct(counter: Counter[str]) -> dict[str, float]:
        return {k: round(100 * v / max(total, 1), 1) for k, v in counter.most_common()}

    return {"gil_samples": total, "by_part_pct": pct(parts), "hot_spots_pct": pct(hot),
            "top_frames_pct": dict(list(pct(leaf).items())[:15]),
            "orchestrator_calls_pct": pct(calls)}


def profile_orchestrator(spy: str, raw: Path, seconds: float, rate: int) -> None:
    """One pass over ready steps, under py-spy from its first line to its last."""
    with bench_stack() as stack:
        workflow_id = ensure_chain_workflow(stack, 1)
        stack.set_cron(False)
        try:
            cancel_all_open(stack)
            seed_ready_steps(stack, workflow_id, 5000)
            out = stack.cfg.state_dir / "bench-profile-result.json"
            env = {**os.environ, **stack.env(), "PYTHONPATH": str(REPO)}
            log(f"profiling one orchestrator pass for {seconds:.0f} s")
            subprocess.run(
                [spy, "record", "-r", str(rate), "-f", "raw", "-o", str(raw), "--",
                 *orchestrator_argv(seconds, 32, 16, stack.api_url, out)],
                cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            report = json.loads(out.read_text()) if out.exists() else {}
            log(f"pass: {report.get('summary')}")
            cancel_all_open(stack)
        finally:
            stack.set_cron(True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--target", choices=["gateway", "orchestrator"], default="gateway")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=600)
    parser.add_argument("--seconds", type=float, default=20.0, help="sampling time")
    parser.add_argument("--rate", type=int, default=50, help="samples per second")
    args = parser.parse_args(argv)
    spy = py_spy()
    if not spy:
        print("py-spy is not installed: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    raw = RESULTS_DIR / f"profile-{args.target}.txt"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    if args.target == "orchestrator":
        profile_orchestrator(spy, raw, args.seconds, args.rate)
        result = summarise(raw)
        log(f"{result['gil_samples']} samples; hot spots (% of samples, overlapping): "
            f"{result['hot_spots_pct']}")
        log(f"top frames: {result['top_frames_pct']}")
        log(f"by call: {result['orchestrator_calls_pct']}")
        write_result("profile-orchestrator", {"params": vars(args),
                                              "collapsed_stacks": str(raw.relative_to(REPO)),
                                              **result})
        return 0
    with bench_stack() as stack:
        pid = stack.pid_of("gateway")
        if not pid:
            raise SystemExit("no gateway pid")
        load = subprocess.Popen(
            [sys.executable, "-m", "bench.throughput", "--jobs", str(args.jobs), "--runs", "1",
             "--steps", str(args.steps), "--cap", str(args.seconds + 20),
             "--result-name", "profile-load"], cwd=REPO,
            stdout=subprocess.DEVNULL)
        time.sleep(10)  # users, two 3 s ceilings, then the starts
        log(f"sampling the gateway (pid {pid}) for {args.seconds:.0f} s")
        subprocess.run([spy, "record", "-p", str(pid), "--subprocesses", "--gil", "--nonblocking",
                        "-r", str(args.rate), "-d", str(int(args.seconds)), "-f", "raw", "-o", str(raw)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        load.wait()
    result = summarise(raw)
    log(f"{result['gil_samples']} samples with the GIL; by part: {result['by_part_pct']}")
    log(f"hot spots (% of samples, overlapping): {result['hot_spots_pct']}")
    log(f"top frames: {result['top_frames_pct']}")
    write_result("profile-gateway", {"params": vars(args),
                                     "collapsed_stacks": str(raw.relative_to(REPO)), **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
