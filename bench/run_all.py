"""Every benchmark on the bench stack, ours interleaved with the peers'; then a summary
against issue 10's goals.

`make bench` runs this. It starts the bench stack (state in .stack-bench/, ports
55421-55425) on a new cluster unless it is already up, and stops it again at the end if
it started it. Each benchmark is its own process and writes bench/results/<name>.json.

Throughput (one start per request, then 100 starts per request), latency and the peers
(DBOS Transact, Procrastinate: bench/peers/) run in rounds, in this order each round,
so that a slow minute of the shared machine hits everyone; each round writes
<name>-r<k>.json, and <name>.json holds the medians over the rounds. The peer table,
with the ratio ours/peer, goes to peers.json; the goals table to summary.md.

    python -m bench.run_all [--quick] [--only throughput latency peers ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any

from bench.common import RESULTS_DIR, bench_stack, log, machine, write_result
from bench.peers import report
from stack.config import REPO

ROUNDS = 3
# (module, arguments) of each benchmark; ROUNDED ones run once per round. Sized so the
# whole run stays within ~30 minutes on a 2-core machine; every load has a time cap,
# reported when it binds.
PLAN: dict[str, tuple[str, list[str]]] = {
    "cold_start": ("bench.cold_start", ["--runs", "5", "--layer"]),
    "throughput": ("bench.throughput", ["--jobs", "2000", "--runs", "1", "--concurrency", "32",
                                        "--cap", "60"]),
    "throughput-batch": ("bench.throughput", ["--jobs", "2000", "--runs", "1", "--concurrency", "32",
                                              "--cap", "60", "--start-batch", "100"]),
    "latency": ("bench.latency", ["--runs", "1", "--probes", "60", "--max-s", "40", "--load-s", "20",
                                  "--cap", "50"]),
    "peers": ("bench.peers", ["--jobs", "2000", "--runs", "1", "--concurrency", "32", "--cap", "90",
                              "--probes", "60"]),
    "memory": ("bench.memory", ["--steps", "10000", "--cap", "180"]),
    "scale": ("bench.scale", ["--levels", "0", "100000", "1000000", "--reps", "40"]),
    # Last: it leaves a million finished jobs in the bench cluster.
    "metrics_cost": ("bench.metrics_cost", ["--jobs", "1000000", "--scrapes", "20"]),
    "dashboard_cost": ("bench.dashboard_cost", ["--jobs", "100000", "--requests", "20"]),
}
QUICK: dict[str, list[str]] = {
    "cold_start": ["--runs", "2"],
    "throughput": ["--jobs", "200", "--runs", "1", "--cap", "30"],
    "throughput-batch": ["--jobs", "400", "--runs", "1", "--cap", "30", "--start-batch", "100"],
    "latency": ["--runs", "1", "--probes", "10", "--max-s", "15", "--load-s", "10", "--cap", "30"],
    "peers": ["--jobs", "200", "--runs", "1", "--cap", "30", "--probes", "10"],
    "memory": ["--steps", "1000", "--cap", "45"],
    "scale": ["--levels", "0", "20000", "--reps", "10"],
    "metrics_cost": ["--jobs", "20000", "--scrapes", "5"],
    "dashboard_cost": ["--jobs", "5000", "--requests", "5"],
}
ROUNDED = ("throughput", "throughput-batch", "latency", "peers")
# Benchmarks whose result name is fixed (latency.json): copied to <name>-r<k>.json.
FIXED_NAME = ("latency",)


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("reached" if ok else "NOT reached")


# Rounds -------------------------------------------------------------------------------

def _merge(values: list[Any]) -> Any:
    """Medians of numbers, element by element through dicts; lists are concatenated."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    if all(isinstance(v, dict) for v in present):
        keys = dict.fromkeys(k for v in present for k in v)
        return {k: _merge([v.get(k) for v in present]) for k in keys}
    if all(isinstance(v, list) for v in present):
        return [x for v in present for x in v]
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return round(statistics.median(present), 4)
    return present[-1]


def merge_rounds(name: str, rounds: int) -> None:
    """<name>.json from <name>-r1..rN.json: every run kept, medians over the rounds."""
    parts = [p for k in range(1, rounds + 1) if (p := load(f"{name}-r{k}")) is not None]
    if not parts:
        return
    write_result(name, {
        "rounds": [f"{name}-r{k}.json" for k in range(1, rounds + 1)],
        "params": parts[0].get("params"),
        "medians": _merge([p["medians"] for p in parts]),
        "runs": _merge([p["runs"] for p in parts]),
    })


def compare_peers(rounds: int) -> dict[str, Any] | None:
    """peers.json: per round, our figures (throughput, batched throughput, latency of
    that round) and each peer's; medians over the rounds; the ratio ours/peer."""
    per_round: list[dict[str, dict[str, float | None]]] = []
    versions: dict[str, str] = {}
    tuning: dict[str, Any] = {}
    for k in range(1, rounds + 1):
        tp, tb, lat, pe = (load(f"{n}-r{k}") for n in ("throughput", "throughput-batch", "latency", "peers"))
        if not pe:
            continue
        unloaded = lat["runs"]["unloaded"] if lat else []
        row = {"ours": report.ours_figures(tp["runs"] if tp else {}, unloaded),
               "ours_batched": report.ours_figures(tb["runs"] if tb else {}, [])}
        for name, runs in pe["runs"].items():
            row[name] = report.peer_figures(runs[0])
            versions[name] = runs[0]["version"]
            tuning[name] = runs[0]["tuning"]
        per_round.append(row)
    if not per_round:
        return None
    systems = list(per_round[0])
    medians = {s: report.medians([r[s] for r in per_round if s in r]) for s in systems}
    peers = [s for s in systems if not s.startswith("ours")]
    labels = {"ours": "supaflow, one start per request",
              "ours_batched": "supaflow, 100 starts per request",
              **{p: f"{p} {versions[p]}" for p in peers}}
    table = report.table_markdown({labels[s]: medians[s] for s in systems}, labels["ours"])
    result = {
        "rounds": per_round, "medians": medians, "versions": versions, "tuning": tuning,
        "ratios_ours_to_peer": {p: report.ratios(medians["ours"], medians[p]) for p in peers},
        "ratios_ours_batched_to_peer": {p: report.ratios(medians["ours_batched"], medians[p])
                                        for p in peers},
        "table_markdown": table,
    }
    write_result("peers", result)
    return result


# Goals --------------------------------------------------------------------------------

def _cpu_all(run: dict[str, Any]) -> float | None:
    return report.ours_cpu_all(run)


def goals() -> list[tuple[str, str, str]]:
    """(goal, figure, verdict) for each of issue 10's goals, from the latest results."""
    rows: list[tuple[str, str, str]] = []
    tp, tb, lat, mem, peers = (load(n) for n in ("throughput", "throughput-batch", "latency", "memory",
                                                 "peers"))
    one = tp["medians"].get("1_step", {}) if tp else {}
    three = tp["medians"].get("3_step", {}) if tp else {}
    b_one = tb["medians"].get("1_step", {}) if tb else {}
    b_three = tb["medians"].get("3_step", {}) if tb else {}
    if three or b_three:
        best = max(three.get("steps_per_s", 0.0), b_three.get("steps_per_s", 0.0))
        rows.append(("3-step no-op jobs >= 500 completed steps/s",
                     f"{three.get('steps_per_s')} steps/s one start per request, "
                     f"{b_three.get('steps_per_s')} with 100 starts per request",
                     verdict(best >= 500)))
    if peers:
        m = peers["medians"]
        peer_names = [p for p in m if not p.startswith("ours")]
        best_peer = max(peer_names, key=lambda p: m[p]["steps_per_s_3"] or 0.0, default=None)
        if best_peer and m[best_peer]["steps_per_s_3"]:
            ours_3 = m["ours"]["steps_per_s_3"] or 0.0
            ours_b3 = m["ours_batched"]["steps_per_s_3"] or 0.0
            peer_3 = m[best_peer]["steps_per_s_3"]
            rows.append(("3-step steps/s >= 1.0x the best peer, same run",
                         f"{ours_3} vs {best_peer} {peer_3}: {ours_3 / peer_3:.2f}x "
                         f"(batched starts: {ours_b3 / peer_3:.2f}x; the peers start one job per call)",
                         verdict(ours_3 / peer_3 >= 1.0)))
    if one:
        rows.append(("1-step jobs, one start per request, 32 clients: >= 200 jobs/s",
                     f"{one['steps_per_s']} jobs/s", verdict(one["steps_per_s"] >= 200)))
    if b_one:
        rows.append(("1-step jobs with batch starts (100 per request): >= 500 jobs/s",
                     f"{b_one['steps_per_s']} jobs/s", verdict(b_one["steps_per_s"] >= 500)))
    if tb and tb["runs"].get("3_step"):
        cpus = [c for r in tb["runs"]["3_step"] if (c := _cpu_all(r)) is not None]
        if cpus:
            cpu = round(statistics.median(cpus), 2)
            rows.append(("CPU per completed step, all processes: <= 4 ms (3-step, batched)",
                         f"{cpu} ms (gateway + PostgREST + Postgres + load client)",
                         verdict(cpu <= 4.0)))
    if lat:
        u = lat["medians"]["unloaded"]
        rows.append(("unloaded 3-step job p50 <= 20 ms", f"{u['p50_ms']} ms", verdict(u["p50_ms"] <= 20)))
        rows.append(("unloaded 3-step job p99 <= 40 ms", f"{u['p99_ms']} ms", verdict(u["p99_ms"] <= 40)))
        loaded = lat["medians"].get("loaded")
        if loaded:
            rows.append(("3-step job p99 under the throughput load <= 1.5 s", f"{loaded['p99_ms']} ms",
                         verdict(loaded["p99_ms"] <= 1500)))
    if mem:
        drained = mem["steps_completed"] == mem["steps_seeded"]
        rows.append(("one orchestrator draining 10,000 steps stays under 64 MiB",
                     f"peak RSS {mem['peak_rss_mib']} MiB ({mem['steps_completed']}/"
                     f"{mem['steps_seeded']} steps drained)",
                     verdict(mem["peak_rss_mib"] < 64) if drained else "n/a (did not drain)"))
    return rows


def other_checks() -> list[str]:
    """Earlier issues' goals, still measured: history scale and import times."""
    lines = []
    sc, cs = load("scale"), load("cold_start")
    if sc:
        r = sc["ratios_last_to_first"]
        lines.append(f"- claim with 1M finished steps vs empty: {r['claim_sql']}x in Postgres, "
                     f"{r['claim_http']}x over HTTP (goal <= 1.5x)")
    if cs:
        for where in ("venv", "layer"):
            if where in cs:
                lines.append(f"- slowest API handler import ({where}): "
                             f"{cs[where]['api_functions_import_ms_max_of_medians']} ms (goal < 300 ms)")
        leaks = cs["venv"]["heavy_sdks_where_not_needed"]
        lines.append(f"- google-genai / boto3 where not needed: {leaks or 'none'}")
    return lines


def summary_markdown(elapsed_s: float, command: str) -> str:
    m = machine()
    lines = [
        f"Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}; load average at the end {m['loadavg_at_start']}.",
        f"Command: `{command}` ({elapsed_s / 60:.1f} min), finished {time.strftime('%Y-%m-%d %H:%M %Z')}.",
        "",
        "| goal (issue 10) | figure (median of rounds) | verdict |",
        "|---|---|---|",
    ]
    lines += [f"| {g} | {f} | {v} |" for g, f, v in goals()]
    peers = load("peers")
    if peers:
        lines += ["", "Peers, same workloads on the same Postgres cluster, interleaved in "
                  f"{len(peers['rounds'])} round(s) (ratio ours/peer: for steps/s above 1 is "
                  "better for us, for latency and CPU below 1 is):", "", peers["table_markdown"]]
    others = other_checks()
    if others:
        lines += ["", "Other checks:", *others]
    return "\n".join(lines) + "\n"


# Running ------------------------------------------------------------------------------

def run(name: str, args: list[str], result_name: str | None = None) -> bool:
    module, _ = PLAN[name]
    extra = ["--result-name", result_name] if result_name and name not in FIXED_NAME else []
    log(f"=== {name} {' '.join(args + extra)}")
    t = time.monotonic()
    code = subprocess.run([sys.executable, "-m", module, *args, *extra], cwd=REPO, env=os.environ,
                          check=False).returncode
    log(f"=== {name} done in {time.monotonic() - t:.0f} s (exit {code})")
    if code == 0 and result_name and name in FIXED_NAME:
        shutil.copyfile(RESULTS_DIR / f"{name}.json", RESULTS_DIR / f"{result_name}.json")
    return code == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes, one round, to try the harness")
    parser.add_argument("--only", nargs="+", choices=list(PLAN), default=list(PLAN))
    parser.add_argument("--rounds", type=int, default=None, help=f"rounds (default {ROUNDS}; 1 with --quick)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else ROUNDS)

    def plan_args(name: str) -> list[str]:
        return QUICK[name] if args.quick else PLAN[name][1]

    started = time.monotonic()
    failures = []
    log(f"machine: {machine()}")
    if "cold_start" in args.only and not run("cold_start", plan_args("cold_start")):
        failures.append("cold_start")  # before the stack starts: no other load
    with bench_stack(fresh=True):
        for k in range(1, rounds + 1):
            log(f"##### round {k}/{rounds}")
            for name in (n for n in ROUNDED if n in args.only):
                if not run(name, plan_args(name), f"{name}-r{k}"):
                    failures.append(f"{name} (round {k})")
        for name in (n for n in PLAN if n not in ROUNDED and n != "cold_start" and n in args.only):
            if not run(name, plan_args(name)):
                failures.append(name)
    for name in (n for n in ROUNDED if n in args.only and n != "peers"):
        merge_rounds(name, rounds)
    if "peers" in args.only:
        compare_peers(rounds)
    elapsed = time.monotonic() - started
    command = "make bench" + (" BENCH_ARGS=--quick" if args.quick else "")
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
