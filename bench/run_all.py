"""Every benchmark, one after the other, on the bench stack; then a summary against the goals.

`make bench` runs this. It starts the bench stack (state in .stack-bench/, ports
55421-55425) unless it is already up, and stops it again at the end if it started it.
Each benchmark is its own process and writes bench/results/<name>.json; the summary
(with the goals, reached or not) goes to bench/results/summary.md.

    python -m bench.run_all [--quick] [--only throughput latency ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from bench.common import RESULTS_DIR, bench_stack, log, machine
from stack.config import REPO

# Sized so the whole run stays within ~25 minutes on a 2-core machine, whatever the
# engine's speed: every load has a time cap, reported when it binds.
PLAN: dict[str, list[str]] = {
    "cold_start": ["--runs", "5", "--layer"],
    "latency": ["--runs", "3", "--probes", "60", "--max-s", "40", "--load-s", "20", "--cap", "50"],
    "throughput": ["--jobs", "2000", "--runs", "3", "--concurrency", "32", "--cap", "60"],
    "memory": ["--steps", "10000", "--cap", "180"],
    "scale": ["--levels", "0", "100000", "1000000", "--reps", "40"],
}
QUICK: dict[str, list[str]] = {
    "cold_start": ["--runs", "2"],
    "latency": ["--runs", "1", "--probes", "10", "--max-s", "15", "--load-s", "10", "--cap", "30"],
    "throughput": ["--jobs", "200", "--runs", "1", "--cap", "30"],
    "memory": ["--steps", "1000", "--cap", "45"],
    "scale": ["--levels", "0", "20000", "--reps", "10"],
}


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("reached" if ok else "NOT reached")


def goals() -> list[tuple[str, str, str]]:
    """(goal, figure, verdict) for each goal of the issue, from the latest results."""
    rows: list[tuple[str, str, str]] = []
    tp, lat, sc, cs = load("throughput"), load("latency"), load("scale"), load("cold_start")
    if tp:
        m = tp["medians"]
        one = m.get("1_step", {})
        best = max((v for v in m.values()), key=lambda v: v["steps_per_s"], default=None)
        if one:
            rows.append((">= 500 completed no-op steps/s (1-step jobs)",
                         f"{one['steps_per_s']} steps/s", verdict(one["steps_per_s"] >= 500)))
        if best:
            rows.append((">= 40% of the raw RPC rate of the same run",
                         f"{best['ratio_to_ceiling']:.1%} ({best['steps_per_s']} steps/s vs "
                         f"{best['ceiling_rpc_per_s_direct']} RPC/s)",
                         verdict(best["ratio_to_ceiling"] >= 0.4)))
    if lat:
        u = lat["medians"]["unloaded"]
        rows.append(("3-step job p50 < 50 ms unloaded", f"{u['p50_ms']} ms", verdict(u["p50_ms"] < 50)))
        rows.append(("3-step job p99 < 250 ms unloaded", f"{u['p99_ms']} ms",
                     verdict(u["p99_ms"] < 250)))
    if sc:
        r = sc["ratios_last_to_first"]
        rows.append(("claim with 1M history within 1.5x of empty",
                     f"{r['claim_sql']}x in Postgres, {r['claim_http']}x over HTTP",
                     verdict(r["claim_sql"] <= 1.5)))
    if cs:
        for where in ("venv", "layer"):
            if where in cs:
                worst = cs[where]["api_functions_import_ms_max_of_medians"]
                rows.append((f"API handler import < 300 ms ({where})", f"{worst} ms (slowest)",
                             verdict(worst < 300)))
        leaks = cs["venv"]["heavy_sdks_where_not_needed"]
        rows.append(("google-genai / boto3 only where needed", str(leaks or "only there"),
                     verdict(not leaks)))
    return rows


def summary_markdown(elapsed_s: float, command: str) -> str:
    m = machine()
    lines = [
        f"Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}; load average at the end {m['loadavg_at_start']}.",
        f"Command: `{command}` ({elapsed_s / 60:.1f} min).",
        "",
        "| goal | figure | verdict |",
        "|---|---|---|",
    ]
    lines += [f"| {g} | {f} | {v} |" for g, f, v in goals()]
    mem = load("memory")
    if mem:
        lines += ["", f"Memory: one orchestrator, {mem['steps_completed']}/{mem['steps_seeded']} steps "
                      f"drained in {mem['elapsed_s']} s: peak RSS {mem['peak_rss_mib']} MiB "
                      f"(after imports {mem['rss_after_import_mib']} MiB)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes, to try the harness")
    parser.add_argument("--only", nargs="+", choices=list(PLAN), default=list(PLAN))
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else PLAN
    started = time.monotonic()
    failures = []
    log(f"machine: {machine()}")
    if "cold_start" in args.only:  # before the stack starts: no other load
        if subprocess.run([sys.executable, "-m", "bench.cold_start", *plan["cold_start"]],
                          cwd=REPO, check=False).returncode:
            failures.append("cold_start")
    with bench_stack(fresh=True):
        for name in (n for n in PLAN if n != "cold_start" and n in args.only):
            log(f"=== {name} {' '.join(plan[name])}")
            t = time.monotonic()
            code = subprocess.run([sys.executable, "-m", f"bench.{name}", *plan[name]],
                                  cwd=REPO, env=os.environ, check=False).returncode
            log(f"=== {name} done in {time.monotonic() - t:.0f} s (exit {code})")
            if code:
                failures.append(name)
    elapsed = time.monotonic() - started
    command = "make bench" + (" (python -m bench.run_all --quick)" if args.quick else "")
    summary = summary_markdown(elapsed, command)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "summary.md").write_text(summary)
    print("\n" + summary, flush=True)
    if failures:
        log(f"failed: {', '.join(failures)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
