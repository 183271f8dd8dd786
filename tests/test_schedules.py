"""Cron-scheduled workflows (DESIGN.md section 11): a pg_cron job per enabled schedule,
named for what it is, runs recorded on the schedule and in each job's origin."""

from __future__ import annotations

import time
import uuid
from typing import Any

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
def test_a_schedule_runs_every_minute_under_pg_cron(stack: Stack, api: Api) -> None:
    """pg_cron 1.4 has minute granularity: two runs take up to two minutes (the one
    test that waits for it)."""
    wid = create_workflow(stack, chain(1))
    schedule_id = f"sc-{uuid.uuid4().hex[:8]}"
    saved = put(api, stack, schedule_id, workflow_id=wid, cron="* * * * *", input={"n": 3})
    assert saved.status_code == 200, saved.text
    assert saved.json()["cron_job"] == f"supaflow-schedule:{schedule_id}"
    assert cron_jobs(stack, schedule_id) == [
        ("* * * * *", f"select workflow.run_schedule('{schedule_id}')")]
    deadline = time.monotonic() + 150
    while len(found := runs(stack, schedule_id)) < 2:
        assert time.monotonic() < deadline, found
        time.sleep(1)
    for job_id, _, origin in found[:2]:
        assert origin == "schedule"
        assert wait_status(stack, job_id, "completed", 60) == "completed"
    listed = api.request("GET", "/schedules", stack.sec.service_role_key).json()["schedules"]
    (mine,) = [s for s in listed if s["schedule_id"] == schedule_id]
    assert mine["last_job_id"] in [r[0] for r in found] and mine["last_error"] is None

    disabled = put(api, stack, schedule_id, workflow_id=wid, cron="* * * * *", enabled=False)
    assert disabled.json()["cron_job"] is None and cron_jobs(stack, schedule_id) == []
    assert api.request("DELETE", f"/schedules/{schedule_id}",
                       stack.sec.service_role_key).json()["deleted"] is True
    assert stack.sql("select count(*) from workflow.schedules where id = %s", (schedule_id,)) \
        == [(0,)]


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
    ({"timezone": "Europe/Paris"}, "timezone"),
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
