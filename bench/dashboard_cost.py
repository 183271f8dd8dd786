"""The dashboard's requests for a user with --jobs jobs (issue 14: usable at 100,000).

On the bench stack (which may hold others' history, e.g. bench.metrics_cost's million):
one user, --jobs finished jobs of theirs written in SQL over 30 days (one in seven
failed), then the medians of what the dashboard asks for that user: GET /stats (their
counts and last hour), GET /jobs (the first page of 50), GET /jobs?status=failed, and a
page further on (the cursor of the first), and GET /stats as an operator.

    python -m bench.dashboard_cost [--jobs 100000] [--requests 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import httpx

from bench.common import BenchStack, bench_stack, log, write_result
from testkit.workflows import create_workflow


def median_ms(http: httpx.Client, url: str, token: str, n: int) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        response = http.get(url, headers={"Authorization": f"Bearer {token}"})
        times.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
    return round(statistics.median(times), 1)


def write_jobs(stack: BenchStack, user_id: str, workflow: str, jobs: int) -> None:
    stack.sql(
        """
        insert into workflow.jobs (user_id, workflow_id, workflow_version, status, created_at,
                                   started_at, completed_at, last_updated_at)
        select %(user)s, %(workflow)s, 1,
               case when g %% 7 = 0 then 'failed' else 'completed' end, t, t, t + d, t + d
        from (select g, now() - random() * interval '30 days' as t,
                     random() * interval '2 seconds' as d
              from generate_series(1, %(n)s) g) x
        """, {"user": user_id, "workflow": workflow, "n": jobs})
    # What autovacuum does within a minute of such a load; without it the planner takes the
    # user for a few rows and reads all of them for a page (the cursor page took 140 ms).
    stack.sql("analyze workflow.jobs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    with bench_stack() as stack, httpx.Client(base_url=stack.api_url, timeout=60) as http:
        user = stack.create_user()
        workflow = create_workflow(stack, {"steps": [{"id": "only", "transformer": "transform"}]},
                                   prefix=f"dash-{uuid.uuid4().hex[:4]}")
        base = {name: median_ms(http, path, user.token, args.requests)
                for name, path in (("stats", "/stats"), ("jobs_first_page", "/jobs?limit=50"))}
        log(f"with no jobs: {base}")
        write_jobs(stack, user.id, workflow, args.jobs)
        (total,) = stack.sql("select count(*) from workflow.jobs")[0]
        first = http.get("/jobs?limit=50", headers={"Authorization": f"Bearer {user.token}"}).json()
        loaded = {
            "stats": median_ms(http, "/stats", user.token, args.requests),
            "jobs_first_page": median_ms(http, "/jobs?limit=50", user.token, args.requests),
            "jobs_failed_first_page": median_ms(http, "/jobs?limit=50&status=failed", user.token,
                                                args.requests),
            "jobs_next_page": median_ms(http, f"/jobs?limit=50&cursor={first['next_cursor']}",
                                        user.token, args.requests),
            "stats_as_operator": median_ms(http, "/stats", stack.sec.service_role_key,
                                           args.requests),
        }
        log(f"with {args.jobs:,} jobs of the user's ({total:,} in the database): {loaded}")
        write_result("dashboard-cost", {"user_jobs": args.jobs, "jobs_in_database": total,
                                        "requests": args.requests, "median_ms_no_jobs": base,
                                        "median_ms_with_jobs": loaded})


if __name__ == "__main__":
    main()
