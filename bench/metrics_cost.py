"""GET /metrics with a million finished jobs of history (issue 14's goal: under 200 ms).

On the bench stack: scrape GET /metrics with what the stack holds (the baseline), then
write --jobs finished jobs with their events in SQL (spread over 30 days, as history
is; a fifth failed; one step each, as start_job and the executors would leave them),
scrape once (that scrape rolls the whole backlog up), then --scrapes more (each rolls
up only what is new: nothing), then add 1,000 more finished jobs and scrape again.
Medians of the same run, and their ratio to the baseline.

    python -m bench.metrics_cost [--jobs 1000000] [--scrapes 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import httpx

from bench.common import BenchStack, bench_stack, log, write_result
from testkit.workflows import create_workflow

BATCH = 50_000


def scrape_ms(stack: BenchStack, http: httpx.Client) -> float:
    started = time.perf_counter()
    response = http.get(f"{stack.api_url}/metrics",
                        headers={"Authorization": f"Bearer {stack.sec.service_role_key}"})
    elapsed = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    return elapsed


def medians(stack: BenchStack, http: httpx.Client, n: int) -> float:
    return statistics.median(scrape_ms(stack, http) for _ in range(n))


def write_history(stack: BenchStack, workflows: list[str], jobs: int, days: float) -> float:
    """Finished jobs, one step each, and the events they would have written."""
    started = time.perf_counter()
    for offset in range(0, jobs, BATCH):
        n = min(BATCH, jobs - offset)
        stack.sql(
            """
            with made as (
              insert into workflow.jobs (workflow_id, workflow_version, status, created_at,
                                         started_at, completed_at, last_updated_at, origin)
              select (%(workflows)s::text[])[1 + g %% cardinality(%(workflows)s::text[])], 1,
                     case when g %% 7 = 0 then 'failed' else 'completed' end,
                     t, t, t + d, t + d, 'sql'
              -- (random() per row: in a subquery, not an uncorrelated lateral, which runs once)
              from (select g, now() - random() * %(days)s * interval '1 day' as t,
                           random() * interval '2 seconds' as d
                    from generate_series(1, %(n)s) g) x
              returning id, status, created_at, completed_at
            )
            insert into workflow.job_events (job_id, seq, event_type, step_id, attempt,
                                             from_status, to_status, detail, created_at)
            select id, 1, 'step_' || status, 'only', 1, 'running', status,
                   jsonb_build_object('transformer_id', 'transform',
                                      'duration_s', extract(epoch from completed_at - created_at),
                                      'error_type', case when status = 'failed' then 'http_5xx' end),
                   completed_at
            from made
            union all
            select id, 2, 'job_' || status, null, null, 'running', status,
                   jsonb_build_object('duration_s', extract(epoch from completed_at - created_at)),
                   completed_at
            from made
            """, {"workflows": workflows, "n": n, "days": days})
        log(f"history: {offset + n:,} of {jobs:,} jobs")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--scrapes", type=int, default=20)
    args = parser.parse_args()
    with bench_stack() as stack, httpx.Client(timeout=600) as http:
        workflows = [create_workflow(stack, {"steps": [{"id": "only", "transformer": "transform"}]},
                                     prefix=f"metrics-{uuid.uuid4().hex[:4]}") for _ in range(5)]
        scrape_ms(stack, http)  # roll up whatever the stack already holds
        baseline = medians(stack, http, args.scrapes)
        log(f"baseline GET /metrics: median {baseline:.1f} ms")
        written_s = write_history(stack, workflows, args.jobs, 30)
        first = scrape_ms(stack, http)
        log(f"first scrape after {args.jobs:,} jobs (rolls them all up): {first:.0f} ms")
        loaded = medians(stack, http, args.scrapes)
        log(f"GET /metrics with {args.jobs:,} jobs of history: median {loaded:.1f} ms")
        write_history(stack, workflows, 1000, 0.001)
        fresh = scrape_ms(stack, http)
        log(f"a scrape that rolls up 1,000 new jobs: {fresh:.1f} ms")
        rows = stack.sql("select (select count(*) from workflow.metric_totals),"
                         " (select count(*) from workflow.metric_rollups)")[0]
        write_result("metrics-cost", {
            "jobs_of_history": args.jobs, "scrapes": args.scrapes,
            "history_written_s": round(written_s, 1),
            "baseline_median_ms": round(baseline, 1),
            "first_scrape_rolling_up_history_ms": round(first),
            "median_ms_with_history": round(loaded, 1),
            "ratio_to_baseline": round(loaded / baseline, 2),
            "scrape_rolling_up_1000_new_jobs_ms": round(fresh, 1),
            "metric_totals_rows": rows[0], "metric_rollups_rows": rows[1],
        })


if __name__ == "__main__":
    main()
