"""Seed 002's metrics (DESIGN.md section 12) against a workload with known counts: jobs
completed and failed by workflow, attempts by step, transformer and error type, known
durations, the windows, the queue, API and pass timings; GET /metrics refused without
credentials; the SQL views agree."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from testkit.api import Api
from testkit.jobs import start, wait_terminal
from testkit.receiver import Receiver, webhook_receiver
from testkit.stack import Stack, unlimited_starts
from testkit.workflows import create_workflow, webhook_transformer

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(api: Api, token: str) -> Samples:
    response = api.request("GET", "/metrics", token)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def one_step(transformer: str, inputs: dict[str, Any] | None = None, **policy: Any) -> dict[str, Any]:
    return {"steps": [{"id": "call", "transformer": transformer, "timeout_s": 10,
                       "inputs": inputs or {}, **policy}]}


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with webhook_receiver() as rec:
        yield rec


@pytest.fixture(scope="module")
def workload(stack: Stack, receiver: Receiver) -> dict[str, str]:
    """3 jobs whose one step takes ~0.3 s; 2 whose step answers 500 twice (a retry, then
    failed); 1 whose step gets a 404 (failed at once); 1 whose inputs cannot be built."""
    api = Api(stack.api_url)
    user = stack.create_user()
    unlimited_starts(stack, user)
    fast_retry = {"retry": {"max_retries": 1, "initial_delay_s": 0.1, "multiplier": 1,
                            "max_delay_s": 0.1, "jitter": 0}}
    slow = webhook_transformer(stack, receiver.url("/slow/300"))
    workflows = {
        "slow": create_workflow(stack, one_step(slow), prefix="m-slow"),
        "http500": create_workflow(stack, one_step(webhook_transformer(stack, receiver.url("/fail")),
                                                   **fast_retry), prefix="m-500"),
        "http404": create_workflow(stack, one_step(webhook_transformer(
            stack, receiver.url("/status/404"))), prefix="m-404"),
        "mapping": create_workflow(stack, one_step("transform", {"x": "$.input.nothing.here"}),
                                   prefix="m-map"),
    }
    counts = {"slow": 3, "http500": 2, "http404": 1, "mapping": 1}
    jobs = [start(api, user, workflows[kind], {"n": i})
            for kind, n in counts.items() for i in range(n)]
    wait_terminal(stack, jobs, 60)
    return {**workflows, "slow_transformer": slow}


def test_metrics_count_a_known_workload(stack: Stack, api: Api, workload: dict[str, str]) -> None:
    samples = scrape(api, stack.sec.service_role_key)
    jobs = "supaflow_job_duration_seconds_count"
    assert value(samples, jobs, workflow=workload["slow"], status="completed") == 3
    assert value(samples, jobs, workflow=workload["http500"], status="failed") == 2
    assert value(samples, jobs, workflow=workload["http404"], status="failed") == 1
    assert value(samples, jobs, workflow=workload["mapping"], status="failed") == 1
    assert (jobs, frozenset({("workflow", workload["slow"]), ("status", "failed")})) \
        not in samples, "no series for what never happened"

    attempts = "supaflow_step_attempt_duration_seconds_count"
    assert value(samples, attempts, workflow=workload["slow"], step="call",
                 transformer=workload["slow_transformer"], outcome="completed", error_type="") == 3
    failed_500 = {(s[1]) for s in samples if s[0] == attempts
                  and ("workflow", workload["http500"]) in s[1]}
    by_outcome = {dict(labels)["outcome"]: (dict(labels)["error_type"], samples[(attempts, labels)])
                  for labels in failed_500}
    assert by_outcome == {"retried": ("http_5xx", 2), "failed": ("http_5xx", 2)}
    assert [dict(s[1])["error_type"] for s in samples if s[0] == attempts
            and ("workflow", workload["http404"]) in s[1]] == ["http_4xx"]
    assert [dict(s[1])["error_type"] for s in samples if s[0] == attempts
            and ("workflow", workload["mapping"]) in s[1]] == ["mapping"]

    # Durations: the slow step takes 0.3 s and a little more; its job a little more again.
    step_sum = value(samples, "supaflow_step_attempt_duration_seconds_sum",
                     workflow=workload["slow"], step="call",
                     transformer=workload["slow_transformer"], outcome="completed", error_type="")
    assert 0.9 <= step_sum < 3 * 1.5, step_sum
    ((db_sum,),) = stack.sql("select sum(extract(epoch from completed_at - created_at))::float8"
                             " from workflow.jobs where workflow_id = %s", (workload["slow"],))
    job_sum = value(samples, "supaflow_job_duration_seconds_sum", workflow=workload["slow"],
                    status="completed")
    assert abs(job_sum - db_sum) < 0.01 and job_sum >= step_sum, (job_sum, db_sum, step_sum)
    under_250ms = value(samples, "supaflow_job_duration_seconds_bucket", workflow=workload["slow"],
                        status="completed", le="0.25")
    assert under_250ms == 0 and value(samples, "supaflow_job_duration_seconds_bucket",
                                      workflow=workload["slow"], status="completed",
                                      le="+Inf") == 3

    # The windows, and their quantiles from the buckets.
    for window in ("5m", "1h"):
        assert value(samples, "supaflow_job_failure_ratio", workflow=workload["http500"],
                     window=window) == 1.0
        assert value(samples, "supaflow_job_failure_ratio", workflow=workload["slow"],
                     window=window) == 0.0
        assert value(samples, "supaflow_jobs_finished_window", workflow=workload["slow"],
                     window=window, status="completed") == 3
    p50 = value(samples, "supaflow_job_duration_window_seconds", workflow=workload["slow"],
                window="5m", quantile="0.50")
    assert 0.25 <= p50 <= 1.0, p50

    # The queue now, and the processes' own timings (flushed every second locally).
    for gauge in ("supaflow_jobs_pending", "supaflow_jobs_running", "supaflow_steps_ready",
                  "supaflow_steps_oldest_ready_age_seconds"):
        assert (gauge, frozenset()) in samples, gauge
    deadline = time.monotonic() + 60
    while (value(samples := scrape(api, stack.sec.service_role_key),
                 "supaflow_api_request_duration_seconds_count",
                 request="POST /workflows/start 202") < 7
           or not sum(v for (name, _), v in samples.items()
                      if name == "supaflow_orchestrator_pass_duration_seconds_count")):
        # (A pass reports when it ends: after its work and a linger, or at cron's next one.)
        assert time.monotonic() < deadline, "the starts' or the passes' timings never arrived"
        time.sleep(0.5)


def test_scraping_again_counts_nothing_twice(stack: Stack, api: Api,
                                             workload: dict[str, str]) -> None:
    first = scrape(api, stack.sec.service_role_key)
    second = scrape(api, stack.sec.service_role_key)
    name = "supaflow_job_duration_seconds_count"
    for kind, status in (("slow", "completed"), ("http500", "failed")):
        assert value(first, name, workflow=workload[kind], status=status) \
            == value(second, name, workflow=workload[kind], status=status) > 0


def test_the_sql_views_say_the_same(stack: Stack, workload: dict[str, str]) -> None:
    stack.sql("select workflow.roll_up_metrics()")
    ((completed, failed, rate, p50),) = stack.sql(
        "select completed, failed, failure_rate, duration_p50_s from workflow.job_metrics"
        " where \"window\" = '1h' and workflow_id = %s", (workload["slow"],))
    assert (completed, failed, float(rate)) == (3, 0, 0.0) and 0.25 <= p50 <= 1.0
    assert stack.sql(
        "select error_type, failed, retried from workflow.step_failure_metrics"
        " where \"window\" = '5m' and workflow_id = %s", (workload["http500"],)) \
        == [("http_5xx", 2, 2)]
    ((attempts,),) = stack.sql("select attempts from workflow.step_duration_metrics"
                               " where \"window\" = '24h' and transformer_id = %s",
                               (workload["slow_transformer"],))
    assert attempts == 3
    ((pending, ready),) = stack.sql("select pending_jobs, ready_steps from workflow.queue_metrics")
    assert pending >= 0 and ready >= 0


def test_metrics_need_credentials(stack: Stack, api: Api) -> None:
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    user = stack.create_user()
    tenant_admin = stack.token(user.id, app_metadata={"supaflow_role": "admin", "tenant_id": tenant})
    global_admin = stack.token(user.id, app_metadata={"supaflow_role": "admin"})
    assert api.request("GET", "/metrics").status_code == 401
    assert api.request("GET", "/metrics", "not-a-token").status_code == 401
    assert api.request("GET", "/metrics", user.token).status_code == 403
    assert api.request("GET", "/metrics", tenant_admin).status_code == 403
    assert api.request("GET", "/metrics", global_admin).status_code == 200
    assert api.request("GET", "/metrics", stack.sec.internal_token).status_code == 200
    # Nor do users read the rollups or the views directly.
    for table in ("metric_totals", "metric_rollups", "job_metrics", "timing_totals"):
        read = httpx.get(f"{stack.api_url}/rest/v1/{table}", headers={
            "apikey": stack.sec.anon_key, "Authorization": f"Bearer {user.token}",
            "Accept-Profile": "workflow"})
        assert read.status_code in (401, 403) and read.json()["code"] == "42501", (table, read.text)


def test_an_event_committed_late_is_counted_once(stack: Stack, workload: dict[str, str]) -> None:
    """A transaction still open when the roll-up runs (a finish in flight) is counted when
    it has ended, not skipped, and never twice (the cursor is the snapshot's xmin).
    (Two jobs: two events of one job would wait on each other's sequence number.)"""
    wid = workload["slow"]

    def completed() -> int:
        stack.sql("select workflow.roll_up_metrics()")
        rows = stack.sql("select count from workflow.metric_totals where kind = 'job'"
                         " and workflow_id = %s and outcome = 'completed'", (wid,))
        return int(rows[0][0]) if rows else 0

    before = completed()
    (job_id,), (other_job,) = stack.sql(
        "select id::text from workflow.jobs where workflow_id = %s limit 2", (wid,))
    with stack.db() as late:
        with late.transaction():
            late.execute("select workflow.append_event(%s, 'job_completed', p_to_status =>"
                         " 'completed', p_detail => '{\"duration_s\": 0.5}')", (job_id,))
            assert completed() == before  # still open: not yet
            with stack.db() as other, other.transaction():  # a later transaction, ended first
                other.execute("select workflow.append_event(%s, 'job_completed', p_to_status =>"
                              " 'completed', p_detail => '{\"duration_s\": 0.5}')", (other_job,))
            assert completed() == before  # held back behind the open one's xid
        assert completed() == before + 2
        assert completed() == before + 2


def test_a_retry_is_counted_by_the_status_it_left(stack: Stack, api: Api,
                                                  workload: dict[str, str]) -> None:
    """(Last in this file: it changes the workload's counts.)"""
    ((job_id, user_id),) = stack.sql("select id::text, user_id::text from workflow.jobs"
                                     " where workflow_id = %s", (workload["mapping"],))
    retried = api.request("POST", f"/jobs/{job_id}/retry", stack.token(user_id))
    assert retried.status_code == 202, retried.text
    wait_terminal(stack, [job_id], 30)
    samples = scrape(api, stack.sec.service_role_key)
    assert value(samples, "supaflow_job_retries_total", workflow=workload["mapping"],
                 from_status="failed") == 1
    # It failed again: two failed endings, one job failed now.
    assert value(samples, "supaflow_job_duration_seconds_count", workflow=workload["mapping"],
                 status="failed") == 2
