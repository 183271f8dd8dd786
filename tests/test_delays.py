"""Delays and phases (DESIGN.md section 11): a step that waits after its dependencies, a
start put off with start_at or delay_s, a trigger starting relative to a row's timestamp;
the waiting is a ready step with a later next_attempt_at, so it costs nothing and
survives a restart of Postgres."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from stack.config import REPO
from supaflow_client.files import load_all
from testkit import faults
from testkit.api import Api
from testkit.jobs import start, wait_job
from testkit.stack import Stack
from testkit.workflows import create_workflow


def step_times(stack: Stack, job_id: str) -> dict[str, tuple[datetime, datetime]]:
    rows = stack.sql("select step_id, started_at, completed_at from workflow.job_steps"
                     " where job_id = %s", (job_id,))
    return {r[0]: (r[1], r[2]) for r in rows}


def test_a_step_waits_its_delay_after_its_dependencies(stack: Stack, api: Api) -> None:
    """The seed-001 onboarding shape: welcome now, follow up later (2 s here)."""
    wid = create_workflow(stack, {"steps": [
        {"id": "welcome", "transformer": "transform", "inputs": {"to": "$.input.email"}},
        {"id": "follow_up", "transformer": "transform", "delay_s": 2,
         "inputs": {"to": "$.input.email"}}]})
    user = stack.create_user()
    job = wait_job(api, user, start(api, user, wid, {"email": "ada@example.test"}), 60)
    assert job["status"] == "completed", job
    times = step_times(stack, job["job_id"])
    waited = (times["follow_up"][0] - times["welcome"][1]).total_seconds()
    assert waited >= 2.0, waited


def test_a_start_is_put_off_by_delay_s_or_start_at(stack: Stack, api: Api) -> None:
    wid = create_workflow(stack, {"steps": [{"id": "a", "transformer": "transform"}]})
    user = stack.create_user()
    delayed = api.start(user.token, {"workflow_id": wid, "delay_s": 2})
    at = datetime.now(UTC) + timedelta(seconds=2)
    scheduled = api.start(user.token, {"workflow_id": wid, "start_at": at.isoformat()})
    assert delayed.status_code == scheduled.status_code == 202, delayed.text
    for answer, earliest in ((delayed, None), (scheduled, at)):
        job_id = answer.json()["job_id"]
        job = wait_job(api, user, job_id, 60)
        assert job["status"] == "completed"
        began = step_times(stack, job_id)["a"][0]
        if earliest is None:  # delay_s counts from the start request
            assert (began - datetime.fromisoformat(job["created_at"])).total_seconds() >= 1.9
        else:
            assert began >= earliest
    (created,) = stack.sql("select detail from workflow.job_events where job_id = %s"
                           " and event_type = 'job_created'", (scheduled.json()["job_id"],))[0]
    assert datetime.fromisoformat(created["start_at"]) == at


@pytest.mark.parametrize(("body", "word"), [
    ({"delay_s": 1, "start_at": "2030-01-01T00:00:00+00:00"}, "not both"),
    ({"delay_s": -1}, "delay_s"),
    ({"delay_s": 40 * 86400}, "delay_s"),
    ({"start_at": "2030-01-01T00:00:00"}, "time zone"),
    ({"start_at": "tomorrow"}, "start_at"),
    ({"start_at": (datetime.now(UTC) + timedelta(days=31)).isoformat()}, "30 days"),
])
def test_a_bad_start_time_is_refused(stack: Stack, api: Api, body: dict[str, Any],
                                     word: str) -> None:
    wid = create_workflow(stack, {"steps": [{"id": "a", "transformer": "transform"}]})
    user = stack.create_user()
    refused = api.start(user.token, {"workflow_id": wid, **body})
    assert refused.status_code == 400 and word in refused.json()["error"]["message"], refused.text
    assert stack.sql("select count(*) from workflow.jobs where user_id = %s", (user.id,)) == [(0,)]


@pytest.mark.timeout(120)
def test_a_delayed_step_survives_a_postgres_restart(stack: Stack, api: Api) -> None:
    wid = create_workflow(stack, {"steps": [
        {"id": "now", "transformer": "transform"},
        {"id": "later", "transformer": "transform", "delay_s": 5}]})
    user = stack.create_user()
    job_id = start(api, user, wid, {})
    deadline = time.monotonic() + 30
    while stack.sql("select status from workflow.job_steps where job_id = %s and step_id = 'now'",
                    (job_id,))[0][0] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    faults.stop_postgres(stack.cfg)
    faults.wait_postgres(stack.cfg)
    faults.wait_healthy(stack)
    job = wait_job(api, user, job_id, 90)  # a pass or the next cron tick finds it when due
    assert job["status"] == "completed", job
    times = step_times(stack, job_id)
    assert (times["later"][0] - times["now"][1]).total_seconds() >= 5


@pytest.fixture
def appointments(stack: Stack) -> Iterator[str]:
    table = f"public.appointments_{uuid.uuid4().hex[:8]}"
    stack.sql(f"create table {table} (id bigint generated always as identity primary key,"
              " patient text not null, appointment_at timestamptz not null)")
    yield table
    stack.sql(f"drop table {table}")


def test_a_trigger_starts_relative_to_a_timestamp_of_the_row(
        stack: Stack, api: Api, appointments: str) -> None:
    """Seed 001's phase: a reminder 1 hour before `appointment_at` (here 1 h 2 s away)."""
    wid = create_workflow(stack, {"steps": [{"id": "remind", "transformer": "transform",
                                             "inputs": {"who": "$.input.patient"}}]})
    trigger_id = f"tr-{uuid.uuid4().hex[:8]}"
    attached = api.request("PUT", f"/triggers/{trigger_id}", stack.sec.service_role_key, json={
        "workflow_id": wid, "table": appointments, "events": ["INSERT"],
        "input_mapping": {"patient": "new.patient"}, "start_at_column": "appointment_at",
        "start_offset_s": -3600})
    assert attached.status_code == 200, attached.text
    at = datetime.now(UTC) + timedelta(hours=1, seconds=2)
    stack.sql(f"insert into {appointments} (patient, appointment_at) values ('Ada', %s)", (at,))
    (job_id,) = stack.sql("select id::text from workflow.jobs where workflow_id = %s", (wid,))[0]
    (due,) = stack.sql("select next_attempt_at from workflow.job_steps where job_id = %s",
                       (job_id,))[0]
    assert abs((due - (at - timedelta(hours=1))).total_seconds()) < 0.01
    deadline = time.monotonic() + 60
    while (status := stack.sql("select status, final_result from workflow.jobs where id = %s",
                               (job_id,))[0])[0] != "completed":
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    assert status[1] == {"who": "Ada"}
    assert step_times(stack, job_id)["remind"][0] >= at - timedelta(hours=1)


def test_a_trigger_phase_may_be_months_ahead(stack: Stack, api: Api, appointments: str) -> None:
    """A user's start waits at most 30 days; a row's own timestamp (a booking in two
    months) is trusted SQL's, and its job waits as long as it takes."""
    wid = create_workflow(stack, {"steps": [{"id": "remind", "transformer": "transform",
                                             "inputs": {"who": "$.input.patient"}}]})
    trigger_id = f"tr-{uuid.uuid4().hex[:8]}"
    assert api.request("PUT", f"/triggers/{trigger_id}", stack.sec.service_role_key, json={
        "workflow_id": wid, "table": appointments, "events": ["INSERT"],
        "input_mapping": {"patient": "new.patient"}, "start_at_column": "appointment_at",
        "start_offset_s": -86400}).status_code == 200
    at = datetime.now(UTC) + timedelta(days=60)
    stack.sql(f"insert into {appointments} (patient, appointment_at) values ('Grace', %s)", (at,))
    (due,) = stack.sql("select s.next_attempt_at from workflow.job_steps s join workflow.jobs j"
                       " on j.id = s.job_id where j.workflow_id = %s", (wid,))[0]
    assert abs((due - (at - timedelta(days=1))).total_seconds()) < 0.01
    assert stack.sql("select count(*) from workflow.trigger_failures where trigger_id = %s",
                     (trigger_id,)) == [(0,)]


def test_the_shipped_onboarding_example_follows_up_after_its_delay(stack: Stack, api: Api) -> None:
    """examples/onboarding (welcome now, follow up in an hour), deployed with a 2 s delay."""
    (item,) = load_all([REPO / "examples" / "onboarding"])
    definition = item.body["definition"]
    assert [s["delay_s"] for s in definition["steps"]] == [0, 3600]
    definition["steps"][1]["delay_s"] = 2
    wid = f"onboarding-{uuid.uuid4().hex[:8]}"
    service = stack.sec.service_role_key
    assert api.request("PUT", f"/workflows/{wid}", service,
                       json={"definition": definition}).status_code == 200
    assert api.request("POST", f"/workflows/{wid}/publish", service).status_code == 200
    user = stack.create_user()
    job = wait_job(api, user, start(api, user, wid, {"email": "ada@example.test"}), 60)
    assert job["status"] == "completed", job
    assert job["final_result"]["follow_up"]["subject"] == "How is it going so far?"
    times = step_times(stack, job["job_id"])
    assert (times["follow_up"][0] - times["welcome"][1]).total_seconds() >= 2
