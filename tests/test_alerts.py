"""Seed 002's alerts (DESIGN.md section 12): each rule fires once and resolves once per
subject, each change is delivered once to its webhook, signed like webhook-call; a storm
of a thousand failed jobs is one alert."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from psycopg.types.json import Jsonb

from shared.executors.webhook_call import verify_signature
from testkit.api import Api
from testkit.jobs import wait_terminal
from testkit.receiver import Receiver, webhook_receiver
from testkit.stack import Stack, unlimited_starts
from testkit.workflows import create_workflow, failing_transformer


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with webhook_receiver() as rec:
        yield rec


@pytest.fixture
def rules(stack: Stack) -> Iterator[None]:
    """The default rules as the migration left them, after each test."""
    saved = stack.sql("select id, threshold, window_s, min_volume, enabled, webhook_url"
                      " from workflow.alert_rules")
    yield
    for rule_id, threshold, window_s, min_volume, enabled, url in saved:
        stack.sql("update workflow.alert_rules set threshold = %s, window_s = %s,"
                  " min_volume = %s, enabled = %s, webhook_url = %s where id = %s",
                  (threshold, window_s, min_volume, enabled, url, rule_id))
    stack.sql("update workflow.alerts set status = 'resolved', resolved_at = now(),"
              " resolve_delivered_at = now() where status = 'firing'")


def evaluate(stack: Stack) -> dict[str, Any]:
    """What the scheduled pass does after its work (a manual pass does the same)."""
    response = httpx.post(f"{stack.api_url}/internal/orchestrator", json={"reason": "manual"},
                          headers={"Authorization": f"Bearer {stack.sec.internal_token}"},
                          timeout=120)
    assert response.status_code == 200, response.text
    summary: dict[str, Any] = response.json()
    assert "alerts_changed" in summary, summary
    return summary


def put_rule(api: Api, stack: Stack, rule_id: str, **body: Any) -> Any:
    response = api.request("PUT", f"/alert-rules/{rule_id}", stack.sec.service_role_key, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def alerts_of(stack: Stack, rule_id: str, subject: str) -> list[tuple[Any, ...]]:
    return stack.sql("select status, fire_delivered_at is not null, resolve_delivered_at is not null"
                     " from workflow.alerts where rule_id = %s and subject = %s order by id",
                     (rule_id, subject))


def sent(stack: Stack, receiver: Receiver, subject: str) -> list[dict[str, Any]]:
    """The alert deliveries for `subject`, each checked to be signed by the deployment."""
    found = []
    for delivery in receiver.deliveries:
        body = json.loads(delivery.body)
        if body.get("subject") == subject:
            assert verify_signature(
                stack.sec.webhook_secret, delivery.headers["x-supaflow-timestamp"],
                delivery.body, delivery.headers["x-supaflow-signature"], tolerance_s=300)
            assert delivery.headers["idempotency-key"] == f"alert:{body['alert_id']}:{body['status']}"
            found.append(body)
    return found


@pytest.mark.timeout(240)
def test_a_storm_of_failures_is_one_alert_delivered_once(
        stack: Stack, api: Api, receiver: Receiver, rules: None) -> None:
    put_rule(api, stack, "high-failure-rate", kind="failure_rate", threshold=0.5, window_s=900,
             min_volume=10, webhook_url=receiver.url("/alerts"))
    user = stack.create_user()
    unlimited_starts(stack, user)
    wid = create_workflow(stack, {"steps": [{"id": "s", "transformer": failing_transformer(
        stack, retryable=False, message="storm")}]}, prefix="storm")
    started = api.request("POST", "/workflows/start", user.token, json={"jobs": [
        {"workflow_id": wid, "input_data": {}, "idempotency_key": f"k{i}"} for i in range(1000)]})
    assert started.status_code == 200, started.text
    jobs = [r["job_id"] for r in started.json()["results"]]
    wait_terminal(stack, jobs, 180)
    assert stack.sql("select count(*) from workflow.jobs where workflow_id = %s and status = 'failed'",
                     (wid,)) == [(1000,)]

    evaluate(stack)
    evaluate(stack)
    assert alerts_of(stack, "high-failure-rate", wid) == [("firing", True, False)]
    (fired,) = sent(stack, receiver, wid)
    assert (fired["status"], fired["rule_id"], fired["kind"], fired["value"]) == (
        "firing", "high-failure-rate", "failure_rate", 1.0)
    firing = api.request("GET", "/alerts", stack.sec.service_role_key).json()["alerts"]
    assert [a["alert_id"] for a in firing if a["subject"] == wid] == [fired["alert_id"]]
    metrics = api.request("GET", "/metrics", stack.sec.service_role_key).text
    assert f'supaflow_alerts_firing{{rule="high-failure-rate",subject="{wid}"}} 1.0' in metrics

    # The rule raised above it: resolved, once, and delivered once.
    put_rule(api, stack, "high-failure-rate", kind="failure_rate", threshold=1.0, window_s=900,
             min_volume=10, webhook_url=receiver.url("/alerts"))
    evaluate(stack)
    evaluate(stack)
    assert alerts_of(stack, "high-failure-rate", wid) == [("resolved", True, True)]
    assert [a["status"] for a in sent(stack, receiver, wid)] == ["firing", "resolved"]
    everything = api.request("GET", "/alerts?status=all", stack.sec.service_role_key).json()
    assert any(a["subject"] == wid and a["status"] == "resolved" for a in everything["alerts"])


def test_stalled_jobs_fire_and_resolve(stack: Stack, api: Api, rules: None) -> None:
    wid = create_workflow(stack, {"steps": [{"id": "s", "transformer": "transform",
                                             "delay_s": 3600}]}, prefix="stall")
    user = stack.create_user()
    job = api.start(user.token, {"workflow_id": wid, "input_data": {}}).json()["job_id"]
    put_rule(api, stack, "stalled-jobs", kind="stalled_jobs", threshold=0, window_s=60)
    evaluate(stack)
    assert alerts_of(stack, "stalled-jobs", wid) == []  # not long enough yet

    def untouched_for_two_minutes(next_retry: str) -> None:
        with stack.db() as conn, conn.transaction():
            conn.execute("set local session_replication_role = replica")  # (no touch trigger)
            conn.execute("update workflow.jobs set status = 'awaiting_retry',"
                         f" next_retry_at = now() + interval '{next_retry}',"
                         " last_updated_at = now() - interval '2 minutes' where id = %s", (job,))

    untouched_for_two_minutes("1 hour")  # waiting out its delay: not stalled
    evaluate(stack)
    assert alerts_of(stack, "stalled-jobs", wid) == []
    untouched_for_two_minutes("-2 minutes")  # due two minutes ago and still waiting
    evaluate(stack)
    assert alerts_of(stack, "stalled-jobs", wid) == [("firing", False, False)]
    api.request("POST", f"/jobs/{job}/cancel", user.token)
    evaluate(stack)
    assert alerts_of(stack, "stalled-jobs", wid) == [("resolved", False, False)]


def test_config_errors_and_slow_passes_fire(stack: Stack, api: Api, rules: None) -> None:
    # A transformer gone (deleted in SQL after the workflow was published): its lookup
    # fails when the step runs.
    missing = f"no-such-transformer-{uuid.uuid4().hex[:6]}"
    wid = create_workflow(stack, {"steps": [{"id": "s", "transformer": missing}]}, prefix="cfg")
    user = stack.create_user()
    job = api.start(user.token, {"workflow_id": wid, "input_data": {}}).json()["job_id"]
    wait_terminal(stack, [job], 30)
    (error_type,) = stack.sql("select error_type from workflow.job_steps where job_id = %s",
                              (job,))[0]
    assert error_type == "config"
    evaluate(stack)
    assert alerts_of(stack, "config-errors", wid) == [("firing", False, False)]

    put_rule(api, stack, "slow-passes", kind="slow_passes", threshold=120, window_s=900)
    minute = time.strftime("%Y-%m-%dT%H:%M:00Z", time.gmtime())
    # One long pass among many short ones: the longest counts, not the average.
    stack.sql("select workflow.record_timings(%s)", (Jsonb([
        {"name": "pass", "label": "scheduled", "minute": minute,
         "durations": [200.5] + [0.1] * 20}]),))
    evaluate(stack)
    ((status, value),) = stack.sql("select status, value from workflow.alerts"
                                   " where rule_id = 'slow-passes' and status = 'firing'")
    assert status == "firing" and value >= 200


def test_alert_routes_are_the_operators(stack: Stack, api: Api) -> None:
    user = stack.create_user()
    tenant_admin = stack.token(user.id, app_metadata={"supaflow_role": "admin", "tenant_id": "t1"})
    for token in (user.token, tenant_admin):
        assert api.request("GET", "/alerts", token).status_code == 403
        assert api.request("GET", "/alert-rules", token).status_code == 403
        assert api.request("PUT", "/alert-rules/x", token, json={
            "kind": "failure_rate", "threshold": 0.5, "window_s": 900}).status_code == 403
    assert api.request("GET", "/alerts").status_code == 401
    rules = api.request("GET", "/alert-rules", stack.sec.service_role_key).json()["rules"]
    assert {r["rule_id"] for r in rules} >= {"high-failure-rate", "stalled-jobs", "slow-passes",
                                             "config-errors"}
    for body, word in (({"kind": "weather", "threshold": 1, "window_s": 900}, "kind"),
                       ({"kind": "failure_rate", "threshold": -1, "window_s": 900}, "threshold"),
                       ({"kind": "failure_rate", "threshold": 1, "window_s": 5}, "window_s"),
                       ({"kind": "failure_rate", "threshold": 1, "window_s": 900,
                         "webhook_url": "ftp://x"}, "webhook_url")):
        refused = api.request("PUT", "/alert-rules/new-rule", stack.sec.service_role_key, json=body)
        assert refused.status_code == 400 and word in refused.json()["error"]["message"], refused.text
    assert stack.sql("select count(*) from workflow.alert_rules where id = 'new-rule'") == [(0,)]


def test_a_trigger_that_cannot_start_its_workflow_fires_an_alert(
        stack: Stack, api: Api, rules: None) -> None:
    """Issue 13's promise: a failed start never blocks the row change, and is alerted."""
    table = f"public.alert_rows_{uuid.uuid4().hex[:8]}"
    stack.sql(f"create table {table} (id bigserial primary key, note text)")
    trigger_id = f"tr-{uuid.uuid4().hex[:8]}"
    try:
        wid = create_workflow(stack, {"steps": [{"id": "s", "transformer": "transform"}]})
        attached = api.request("PUT", f"/triggers/{trigger_id}", stack.sec.service_role_key,
                               json={"workflow_id": wid, "table": table, "events": ["INSERT"]})
        assert attached.status_code == 200, attached.text
        stack.sql("update workflow.workflows set is_active = false where id = %s", (wid,))
        stack.sql(f"insert into {table} (note) values ('kept')")
        assert stack.sql(f"select count(*) from {table}") == [(1,)]
        evaluate(stack)
        ((status, value),) = [row[:2] for row in stack.sql(
            "select status, value from workflow.alerts where rule_id = 'trigger-failures'"
            " and subject = %s", (trigger_id,))]
        assert (status, value) == ("firing", 1)
    finally:
        api.request("DELETE", f"/triggers/{trigger_id}", stack.sec.service_role_key)
        stack.sql(f"drop table if exists {table}")
