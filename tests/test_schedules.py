"""Cron-scheduled workflows (DESIGN.md section 11): a pg_cron job per enabled schedule,
named for what it is, runs recorded on the schedule and in each job's origin."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from testkit.api import Api
from testkit.jobs import wait_status
from testkit.stack import Stack
from testkit.workflows import chain, create_workflow


def put(api: Api, stack: Stack, schedule_id: str, **body: Any) -> Any:
    return api.request("PUT", f"/schedules/{schedule_id}", stack.sec.service_role_key, json=body)


def cron_jobs(stack: Stack, schedule_id: str) -> list[tuple[Any, ...]]:
    return stack.sql("select schedule, command from cron.job where jobname = %s",
                     (f"supaflow-schedule:{schedule_id}",))


def runs(stack: Stack, schedule_id: str) -> list[tuple[Any, ...]]:
    return stack.sql("select j.id::text, j.status, j.origin from workflow.jobs j join"
                     " workflow.job_events e on e.job_id = j.id and e.event_type = 'job_created'"
                     " where e.detail -> 'origin' ->> 'schedule_id' = %s order by j.created_at",
                     (schedule_id,))


@pytest.mark.timeout(200)
def test_a_schedule_runs_on_its_own_time_zone_under_pg_cron(stack: Stack, api: Api) -> None:
    """pg_cron 1.4 has minute granularity: two runs take up to two minutes (the one
    test that waits for it). The schedule is in Asia/Kolkata (UTC+5:30) and names the
    next four minutes there: read in UTC those minutes are half an hour away, so the
    runs prove the expression is read in the schedule's zone."""
    wid = create_workflow(stack, chain(1))
    schedule_id = f"sc-{uuid.uuid4().hex[:8]}"
    now = datetime.now(ZoneInfo("Asia/Kolkata"))
    minutes = ",".join(str((now + timedelta(minutes=k)).minute) for k in range(4))
    cron = f"{minutes} * * * *"
    saved = put(api, stack, schedule_id, workflow_id=wid, cron=cron, timezone="Asia/Kolkata",
                input={"n": 3})
    assert saved.status_code == 200, saved.text
    assert saved.json()["cron_job"] == f"supaflow-schedule:{schedule_id}"
    # Kolkata's offset is not whole hours: pg_cron wakes it each minute to check.
    assert cron_jobs(stack, schedule_id) == [
        ("* * * * *", f"select workflow.run_schedule_when_due('{schedule_id}')")]
    deadline = time.monotonic() + 150
    while len(found := runs(stack, schedule_id)) < 2:
        assert time.monotonic() < deadline, found
        time.sleep(1)
    for job_id, _, origin in found[:2]:
        assert origin == "schedule"
        assert wait_status(stack, job_id, "completed", 60) == "completed"
        # Each run is keyed by its minute in Kolkata.
        ((key, created),) = stack.sql(
            "select idempotency_key, created_at from workflow.jobs where id = %s", (job_id,))
        local = created.astimezone(ZoneInfo("Asia/Kolkata")).strftime("%Y-%m-%dT%H:%M")
        assert key == f"schedule:{schedule_id}:{local}"
    listed = api.request("GET", "/schedules", stack.sec.service_role_key).json()["schedules"]
    (mine,) = [s for s in listed if s["schedule_id"] == schedule_id]
    assert mine["last_job_id"] in [r[0] for r in found] and mine["last_error"] is None
    assert mine["timezone"] == "Asia/Kolkata" and mine["cron"] == cron

    disabled = put(api, stack, schedule_id, workflow_id=wid, cron=cron, enabled=False)
    assert disabled.json()["cron_job"] is None and cron_jobs(stack, schedule_id) == []
    assert api.request("DELETE", f"/schedules/{schedule_id}",
                       stack.sec.service_role_key).json()["deleted"] is True
    assert stack.sql("select count(*) from workflow.schedules where id = %s", (schedule_id,)) \
        == [(0,)]


def test_a_schedule_in_utc_is_pg_crons_own(stack: Stack, api: Api) -> None:
    wid = create_workflow(stack, chain(1))
    schedule_id = f"sc-{uuid.uuid4().hex[:8]}"
    assert put(api, stack, schedule_id, workflow_id=wid, cron="0 3 * * *").status_code == 200
    assert cron_jobs(stack, schedule_id) == [
        ("0 3 * * *", f"select workflow.run_schedule('{schedule_id}')")]
    # A zone whose offset is whole hours all year is woken hourly, on the schedule's minute.
    assert put(api, stack, schedule_id, workflow_id=wid, cron="15 9 * * mon-fri",
               timezone="Europe/Paris").status_code == 200
    assert cron_jobs(stack, schedule_id) == [
        ("15 * * * *", f"select workflow.run_schedule_when_due('{schedule_id}')")]
    api.request("DELETE", f"/schedules/{schedule_id}", stack.sec.service_role_key)


def runs_over(stack: Stack, schedule_id: str, first: str, last: str) -> list[str]:
    """run_schedule_when_due called for each UTC minute from first to last, as pg_cron
    would: the local minutes of the runs, marked when the job was already there."""
    return [r[0] for r in stack.sql(
        "select to_char(t at time zone s.timezone, 'YYYY-MM-DD HH24:MI')"
        " || case when (r ->> 'existing')::boolean then ' again' else '' end"
        " from workflow.schedules s, generate_series(%s::timestamptz, %s::timestamptz,"
        " interval '1 minute') t, lateral workflow.run_schedule_when_due(s.id, t) r"
        " where s.id = %s and (r ->> 'started')::boolean order by t",
        (first, last, schedule_id))]


def test_daylight_saving_skips_a_missing_time_and_runs_a_repeated_one_once(
        stack: Stack, api: Api, no_cron: None) -> None:
    """New York, 2026: clocks go forward at 02:00 on 8 March, back at 02:00 on
    1 November."""
    wid = create_workflow(stack, chain(1))
    schedule_id = f"sc-{uuid.uuid4().hex[:8]}"
    assert put(api, stack, schedule_id, workflow_id=wid, cron="30 2 * * *",
               timezone="America/New_York", overlap="allow").status_code == 200
    # 02:30 on the 7th (07:30 UTC) runs; on the 8th it does not exist; on the 9th, 06:30 UTC.
    assert runs_over(stack, schedule_id, "2026-03-07 00:00Z", "2026-03-09 23:59Z") == [
        "2026-03-07 02:30", "2026-03-09 02:30"]
    assert put(api, stack, schedule_id, workflow_id=wid, cron="30 1 * * *",
               timezone="America/New_York", overlap="allow").status_code == 200
    # 01:30 happens twice on 1 November (05:30 and 06:30 UTC): one job.
    assert runs_over(stack, schedule_id, "2026-11-01 00:00Z", "2026-11-01 12:00Z") == [
        "2026-11-01 01:30", "2026-11-01 01:30 again"]
    assert len(runs(stack, schedule_id)) == 3
    api.request("DELETE", f"/schedules/{schedule_id}", stack.sec.service_role_key)


def test_a_run_skips_while_the_previous_job_is_going(stack: Stack, api: Api, no_cron: None) -> None:
    """run_schedule, called as pg_cron would: overlap skip waits for the previous job,
    allow does not."""
    # Its one step waits a minute: the first run's job is still going for the next ones.
    wid = create_workflow(stack, {"steps": [{"id": "a", "transformer": "transform",
                                             "delay_s": 60}]})
    schedule_id = f"sc-{uuid.uuid4().hex[:8]}"
    assert put(api, stack, schedule_id, workflow_id=wid, cron="0 3 * * *").status_code == 200
    (first,) = stack.sql("select workflow.run_schedule(%s)", (schedule_id,))[0]
    assert first["started"] is True
    (skipped,) = stack.sql("select workflow.run_schedule(%s)", (schedule_id,))[0]
    assert skipped == {"started": False, "reason": "previous run still going"}
    put(api, stack, schedule_id, workflow_id=wid, cron="0 3 * * *", overlap="allow")
    (again,) = stack.sql("select workflow.run_schedule(%s)", (schedule_id,))[0]
    assert again["started"] is True  # (the same job, existing, if still in the same minute)
    stack.sql("delete from cron.job where jobname = %s", (f"supaflow-schedule:{schedule_id}",))


@pytest.mark.parametrize(("change", "word"), [
    ({"cron": "every day"}, "cron"),
    ({"cron": "61 * * * *"}, "cron"),
    ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
    ({"timezone": "Europe/Paris", "cron": "* * * * * *"}, "cron"),
    ({"cron": "61 * * * *", "enabled": False}, "cron"),
    ({"workflow_id": "no-such-workflow"}, "workflow_id"),
    ({"overlap": "queue"}, "overlap"),
    ({"owner": "not-a-uuid"}, "owner"),
    ({"owner": str(uuid.uuid4())}, "owner"),
])
def test_a_bad_schedule_is_refused_and_installs_nothing(
        stack: Stack, api: Api, change: dict[str, Any], word: str) -> None:
    wid = create_workflow(stack, chain(1))
    schedule_id = f"sc-{uuid.uuid4().hex[:8]}"
    refused = put(api, stack, schedule_id, **{"workflow_id": wid, "cron": "* * * * *", **change})
    assert refused.status_code == 400 and word in refused.json()["error"]["message"], refused.text
    assert cron_jobs(stack, schedule_id) == []
    assert stack.sql("select count(*) from workflow.schedules where id = %s", (schedule_id,)) \
        == [(0,)]


def test_schedules_are_the_service_roles(stack: Stack, api: Api) -> None:
    admin = stack.create_user()
    token = stack.token(admin.id, app_metadata={"supaflow_role": "admin"})
    assert api.request("GET", "/schedules", token).status_code == 403
    assert api.request("PUT", "/schedules/sc-x", token,
                       json={"workflow_id": "w", "cron": "* * * * *"}).status_code == 403
