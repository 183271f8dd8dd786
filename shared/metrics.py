"""Seed 002's metrics: what GET /metrics serves, and the timings functions measure.

Job and step metrics are counted by SQL from the event log (roll_up_metrics); this
module only reads them (metrics_report) and writes them out in Prometheus' text format
with prometheus_client. What only a process sees (how long an API request or an
orchestrator pass took) is buffered here and flushed every `metrics_flush_s` by a
daemon thread, as raw durations: SQL alone buckets them (workflow.duration_bounds).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from shared import db
from shared.log import logger
from shared.settings import settings

TimingName = str  # "api" | "pass" (the SQL checks)
# Flush early when this many durations wait, whatever the interval.
MAX_BUFFERED = 5000
QUEUE_GAUGES = {
    "pending_jobs": ("supaflow_jobs_pending", "Jobs waiting for their first step"),
    "running_jobs": ("supaflow_jobs_running", "Jobs with a step running or due"),
    "awaiting_retry_jobs": ("supaflow_jobs_awaiting_retry",
                            "Jobs whose only work left waits for a retry or a delay"),
    "ready_steps": ("supaflow_steps_ready", "Steps due now and not yet claimed"),
    "delayed_steps": ("supaflow_steps_delayed", "Steps waiting for a later time"),
    "oldest_ready_age_s": ("supaflow_steps_oldest_ready_age_seconds",
                           "How long the longest-waiting due step has waited"),
}


class Timings:
    """Durations one process measured, per (name, label, minute), until flushed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer: dict[tuple[str, str, str], list[float]] = defaultdict(list)
        self._count = 0
        self._flusher: threading.Thread | None = None

    def record(self, name: TimingName, label: str, seconds: float) -> None:
        minute = datetime.now(UTC).replace(second=0, microsecond=0).isoformat()
        with self._lock:
            self._buffer[(name, label[:200], minute)].append(round(seconds, 6))
            self._count += 1
            full = self._count >= MAX_BUFFERED
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._run, name="metrics-flush", daemon=True)
                self._flusher.start()
        if full:
            self.flush()

    def take(self) -> list[dict[str, Any]]:
        with self._lock:
            buffer, self._buffer, self._count = self._buffer, defaultdict(list), 0
        return [{"name": name, "label": label, "minute": minute, "durations": durations}
                for (name, label, minute), durations in buffer.items()]

    def flush(self) -> None:
        rows = self.take()
        if not rows:
            return
        try:
            db.rpc("record_timings", {"p_rows": rows})
        except Exception as exc:  # noqa: BLE001 - metrics never fail the work they measure
            logger.warning("timings not recorded", extra={"error": repr(exc)[:300],
                                                          "rows": len(rows)})

    def _run(self) -> None:
        while True:
            time.sleep(settings().metrics_flush_s)
            self.flush()


TIMINGS = Timings()


def _labels(row: dict[str, Any], names: list[str]) -> list[str]:
    return [str(row[name]) for name in names]


def _histogram(bounds: list[float], row: dict[str, Any]) -> list[tuple[str, float]]:
    """Cumulative buckets as Prometheus wants them, from SQL's per-bucket counts."""
    out, seen = [], 0
    for bound, count in zip([*map(str, bounds), "+Inf"], row["duration_buckets"], strict=True):
        seen += count
        out.append((bound, seen))
    return out


class Report(Collector):
    """One metrics_report, as Prometheus metric families."""

    def __init__(self, report: dict[str, Any]) -> None:
        self.report = report

    def collect(self) -> Iterator[Metric]:
        bounds: list[float] = self.report["bounds"]
        totals: list[dict[str, Any]] = self.report["totals"]
        jobs = HistogramMetricFamily("supaflow_job_duration_seconds",
                                     "Finished jobs: how long from start to end",
                                     labels=["workflow", "status"])
        steps = HistogramMetricFamily("supaflow_step_attempt_duration_seconds",
                                      "Ended step attempts: how long each ran",
                                      labels=["workflow", "step", "transformer", "outcome",
                                              "error_type"])
        retries = CounterMetricFamily("supaflow_job_retries",
                                      "Finished jobs retried (POST /jobs/{id}/retry), by the"
                                      " status they left", labels=["workflow", "from_status"])
        for row in totals:
            if row["kind"] == "retry":
                retries.add_metric(_labels(row, ["workflow_id", "outcome"]), row["count"])
                continue
            family, names = ((jobs, ["workflow_id", "outcome"]) if row["kind"] == "job" else
                             (steps, ["workflow_id", "step_id", "transformer_id", "outcome",
                                      "error_type"]))
            family.add_metric(_labels(row, names), _histogram(bounds, row), row["duration_sum"])
        yield jobs
        yield steps
        yield retries
        timings = {"api": HistogramMetricFamily(
                       "supaflow_api_request_duration_seconds",
                       "API requests: route and status, how long each took", labels=["request"]),
                   "pass": HistogramMetricFamily(
                       "supaflow_orchestrator_pass_duration_seconds",
                       "Orchestrator passes: how long each ran", labels=["pass"])}
        for row in self.report["timings"]:
            timings[row["name"]].add_metric([row["label"]], _histogram(bounds, row),
                                            row["duration_sum"])
        yield from timings.values()
        yield from self._windows()
        queue = self.report["queue"]
        for key, (name, doc) in QUEUE_GAUGES.items():
            yield GaugeMetricFamily(name, doc, value=float(queue[key]))
        firing = GaugeMetricFamily("supaflow_alerts_firing", "Alerts firing now (GET /alerts)",
                                   labels=["rule", "subject"])
        for alert in self.report["alerts"]:
            firing.add_metric([alert["rule_id"], alert["subject"]], 1.0)
        yield firing

    def _windows(self) -> Iterator[Metric]:
        failure = GaugeMetricFamily("supaflow_job_failure_ratio",
                                    "Failed of finished jobs, over the window",
                                    labels=["workflow", "window"])
        finished = GaugeMetricFamily("supaflow_jobs_finished_window",
                                     "Jobs finished over the window", labels=["workflow", "window",
                                                                              "status"])
        quantiles = GaugeMetricFamily("supaflow_job_duration_window_seconds",
                                      "Job duration quantiles over the window (from buckets)",
                                      labels=["workflow", "window", "quantile"])
        for row in self.report["jobs"]:
            where = [row["workflow_id"], row["window"]]
            failure.add_metric(where, float(row["failure_rate"]))
            for status in ("completed", "failed", "cancelled"):
                finished.add_metric([*where, status], float(row[status]))
            for q in ("50", "95", "99"):
                value = row[f"duration_p{q}_s"]
                if value is not None:
                    quantiles.add_metric([*where, f"0.{q}"], float(value))
        yield failure
        yield finished
        yield quantiles


def prometheus_text(claims: dict[str, Any]) -> bytes:
    """GET /metrics' body: everything, rolled up to this moment."""
    report = db.obj(db.rpc("metrics_report", {"p_claims": claims}))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Report(report))
    return generate_latest(registry)
