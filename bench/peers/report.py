"""The peer table: the same four figures for us and for each peer, medians over rounds,
and the ratio ours/peer (for steps/s above 1 is better for us; for latency and CPU,
below 1 is)."""

from __future__ import annotations

import statistics
from typing import Any

FIGURES = {  # key -> (column title, higher is better)
    "steps_per_s_1": ("1-step steps/s", True),
    "steps_per_s_3": ("3-step steps/s", True),
    "unloaded_p50_ms": ("unloaded 3-step p50 ms", False),
    "unloaded_p99_ms": ("unloaded 3-step p99 ms", False),
    "cpu_ms_per_step_1": ("CPU ms/step 1-step", False),
    "cpu_ms_per_step_3": ("CPU ms/step 3-step", False),
}


def _med(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 2) if present else None


def peer_figures(run: dict[str, Any]) -> dict[str, float | None]:
    """The table's figures from one round of one peer (bench.peers.harness.run_peer)."""
    out: dict[str, float | None] = {}
    for n in (1, 3):
        r = run.get(f"{n}_step")
        out[f"steps_per_s_{n}"] = r["steps_per_s"] if r else None
        cpu = (r or {}).get("cpu", {}).get("cpu_ms_per_step")
        out[f"cpu_ms_per_step_{n}"] = cpu["all_processes"] if cpu else None
    u = run.get("unloaded", {}).get("start_to_completed")
    out["unloaded_p50_ms"] = u["p50_ms"] if u else None
    out["unloaded_p99_ms"] = u["p99_ms"] if u else None
    return out


def ours_cpu_all(run: dict[str, Any]) -> float | None:
    """CPU ms per completed step of one bench.throughput run, every process together:
    gateway, PostgREST, Postgres and the load client (as for the peers)."""
    cpu = run.get("cpu", {}).get("cpu_ms_per_step")
    if not cpu:
        return None
    return round(sum(float(cpu[k]) for k in ("gateway", "postgrest", "postgres", "bench_client")), 3)


def ours_figures(throughput_runs: dict[str, list[dict[str, Any]]],
                 latency_unloaded: list[dict[str, Any]]) -> dict[str, float | None]:
    """Our figures, medians over the runs given (bench.throughput's `runs`, and
    bench.latency's unloaded runs)."""
    out: dict[str, float | None] = {}
    for n in (1, 3):
        rs = throughput_runs.get(f"{n}_step", [])
        out[f"steps_per_s_{n}"] = _med([r["steps_per_s"] for r in rs])
        out[f"cpu_ms_per_step_{n}"] = _med([ours_cpu_all(r) for r in rs])
    out["unloaded_p50_ms"] = _med([r["start_to_completed"]["p50_ms"] for r in latency_unloaded])
    out["unloaded_p99_ms"] = _med([r["start_to_completed"]["p99_ms"] for r in latency_unloaded])
    return out


def medians(rounds: list[dict[str, float | None]]) -> dict[str, float | None]:
    return {k: _med([r[k] for r in rounds if r.get(k) is not None]) for k in FIGURES}


def ratios(ours: dict[str, float | None], peer: dict[str, float | None]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for k in FIGURES:
        a, b = ours.get(k), peer.get(k)
        out[k] = round(a / b, 2) if a is not None and b else None
    return out


def _fmt(v: float | None) -> str:
    return "-" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:g}")


def table_markdown(rows: dict[str, dict[str, float | None]], ours_key: str) -> str:
    """systems x figures, then one line per peer with ours (the `ours_key` row)/peer for
    each figure; rows named supaflow... are ours."""
    keys = list(FIGURES)
    lines = ["| system | " + " | ".join(FIGURES[k][0] for k in keys) + " |",
             "|---|" + "---|" * len(keys)]
    for name, fig in rows.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(fig.get(k)) for k in keys) + " |")
    ours = rows[ours_key]
    for name, fig in rows.items():
        if name.startswith("supaflow"):
            continue
        r = ratios(ours, fig)
        lines.append(f"| ratio ours/{name} | " + " | ".join(
            "-" if r[k] is None else f"{r[k]:.2f}x" for k in keys) + " |")
    return "\n".join(lines)
