"""Starting a job from SQL (workflow.start_workflow, DESIGN.md section 11): in the
caller's transaction, for a user or for nobody, with start_job's bounds and idempotency,
the orchestrator kicked through net.http_post only once the transaction commits."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from shared import jobs
from testkit.api import Api
from testkit.jobs import wait_status
from testkit.stack import Stack, net_response
from testkit.workflows import chain, create_workflow


def no_pass_alive(stack: Stack, timeout_s: float = 60) -> None:
    """Until every orchestrator pass has ended, so that the next start needs a kick."""
    deadline = time.monotonic() + timeout_s
    while stack.sql("select count(*) from workflow.orchestrator_passes"
                    " where alive_until > now()")[0][0]:
        assert time.monotonic() < deadline, "an orchestrator pass stayed alive"
        time.sleep(0.2)


def start_in_sql(conn: psycopg.Connection[tuple[Any, ...]], workflow_id: str, input_data: Any,
                 user_id: str | None = None, key: str | None = None) -> dict[str, Any]:
    conn.execute("set local role service_role")
    row = conn.execute("select workflow.start_workflow(%s, %s, %s, %s)",
                       (workflow_id, Jsonb(input_data), user_id, key)).fetchone()
    assert row is not None
    result: dict[str, Any] = row[0]
    return result


def queued_kicks(conn: psycopg.Connection[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    conn.execute("reset role")  # net is not the service role's to read
    return conn.execute("select id, url, convert_from(body, 'UTF8')::jsonb from"
                        " net.http_request_queue where url like '%/internal/orchestrator'").fetchall()


def test_a_rolled_back_start_leaves_no_job_and_sends_nothing(stack: Stack, no_cron: None) -> None:
    wid = create_workflow(stack, chain(1))
    user = stack.create_user()
    no_pass_alive(stack)
    deadline = time.monotonic() + 15  # a cron kick sent before cron paused: let it land
    while stack.sql("select count(*) from net.http_request_queue")[0][0]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(2.5)
    (responses_before,) = stack.sql("select coalesce(max(id), 0) from net._http_response")[0]
    with stack.db() as conn, pytest.raises(psycopg.errors.RaiseException), conn.transaction():
        started = start_in_sql(conn, wid, {"n": 1}, user.id)
        assert started["existing"] is False and "kick" not in started
        assert len(queued_kicks(conn)) == 1, "the kick is queued in the transaction"
        conn.execute("do $$ begin raise exception 'the caller rolls back'; end $$")
    time.sleep(1.5)  # the pg_net worker would have sent a committed kick by now
    assert stack.sql("select count(*) from workflow.jobs where workflow_id = %s", (wid,)) == [(0,)]
    assert stack.sql("select count(*) from net.http_request_queue") == [(0,)]
    assert stack.sql("select count(*) from net._http_response where id > %s",
                     (responses_before,)) == [(0,)]


def test_a_committed_start_is_kicked_after_commit_and_runs(stack: Stack, api: Api,
                                                           no_cron: None) -> None:
    """No cron, no API call: the kick that start_workflow queued, sent by the pg_net
    worker after the commit, is what runs the job."""
    wid = create_workflow(stack, chain(2))
    user = stack.create_user()
    no_pass_alive(stack)
    with stack.db() as conn:
        with conn.transaction():
            started = start_in_sql(conn, wid, {"n": 4}, user.id)
            ((kick_id, url, body),) = queued_kicks(conn)
            assert body == {"reason": "job started"} and url.startswith(stack.api_url)
            assert conn.execute("select count(*) from net._http_response where id = %s",
                                (kick_id,)).fetchone() == (0,), "nothing is sent before commit"
    # Sent (its answer comes after the whole pass, so it may time out: None).
    assert net_response(stack, kick_id)[0] in (200, None)
    job_id = str(started["job_id"])
    assert wait_status(stack, job_id, "completed", 30) == "completed"
    job = api.request("GET", f"/jobs/{job_id}", user.token).json()
    assert (job["origin"], job["user_id"], job["final_result"]) == ("sql", user.id, {"n": 4})
    (created,) = stack.sql("select detail from workflow.job_events where job_id = %s"
                           " and event_type = 'job_created'", (job_id,))
    assert created[0]["origin"] == {"type": "sql"}


def test_a_start_for_nobody_is_idempotent_and_seen_by_admins_only(stack: Stack, api: Api) -> None:
    wid = create_workflow(stack, chain(1))
    with stack.db() as conn, conn.transaction():
        first = start_in_sql(conn, wid, {"n": 2}, key="nightly-2026-12-02")
    with stack.db() as conn, conn.transaction():
        again = start_in_sql(conn, wid, {"n": 2}, key="nightly-2026-12-02")
    # The same job (its status may have moved on since).
    assert (again["job_id"], again["existing"], first["existing"]) == (first["job_id"], True, False)
    with stack.db() as conn, pytest.raises(psycopg.Error, match="different input"), \
            conn.transaction():
        start_in_sql(conn, wid, {"n": 3}, key="nightly-2026-12-02")
    job_id = str(first["job_id"])
    assert wait_status(stack, job_id, "completed", 60) == "completed"
    service = stack.sec.service_role_key
    shown = api.request("GET", f"/jobs/{job_id}", service).json()
    assert (shown["user_id"], shown["origin"]) == (None, "sql")
    assert api.request("GET", f"/jobs/{job_id}", stack.create_user().token).status_code == 404
    listed = api.request("GET", f"/jobs?origin=sql&workflow_id={wid}", service).json()["jobs"]
    assert [j["job_id"] for j in listed] == [job_id]
    assert api.request("GET", f"/jobs?origin=api&workflow_id={wid}", service).json()["jobs"] == []
    bad = api.request("GET", "/jobs?origin=cron", service)
    assert bad.status_code == 400 and "origin" in bad.json()["error"]["message"]


def test_a_sql_start_keeps_the_api_bounds(stack: Stack) -> None:
    wid = create_workflow(stack, chain(1))
    deep: Any = 1
    for _ in range(70):
        deep = [deep]
    for input_data, message in (({"n": deep}, "nested more than 64 levels"),
                                ([1, 2], "must be a JSON object")):
        with stack.db() as conn, pytest.raises(psycopg.Error, match=message), conn.transaction():
            start_in_sql(conn, wid, input_data)
    with stack.db() as conn, pytest.raises(psycopg.Error, match="not found"), conn.transaction():
        start_in_sql(conn, "no-such-workflow", {})
    with stack.db() as conn, pytest.raises(psycopg.Error, match="origin"), conn.transaction():
        conn.execute("set local role service_role")
        conn.execute("select workflow.start_workflow(%s, '{}', null, null, '{\"type\": \"cron\"}')",
                     (wid,))
    assert stack.sql("select count(*) from workflow.jobs where workflow_id = %s", (wid,)) == [(0,)]


def test_the_api_and_the_database_know_the_same_origins(stack: Stack) -> None:
    (check,) = stack.sql("select pg_get_constraintdef(c.oid) from pg_constraint c where"
                         " c.conrelid = 'workflow.jobs'::regclass and c.conname like '%origin%'")[0]
    assert tuple(re.findall(r"'(\w+)'::text", check)) == jobs.ORIGINS


# Database-event triggers ---------------------------------------------------------------


@pytest.fixture
def signups(stack: Stack) -> Iterator[str]:
    """A table of the user's own, as an app would have: public.signups_<random>."""
    table = f"public.signups_{uuid.uuid4().hex[:8]}"
    stack.sql(f"create table {table} (id bigint generated always as identity primary key,"
              " email text not null, plan text not null default 'free', owner uuid,"
              " confirmed boolean not null default false)")
    stack.sql(f"grant all on {table} to service_role")
    yield table
    stack.sql(f"drop table {table}")


def attach(api: Api, stack: Stack, trigger_id: str, **body: Any) -> Any:
    return api.request("PUT", f"/triggers/{trigger_id}", stack.sec.service_role_key, json=body)


def test_a_row_insert_starts_one_job_with_input_from_the_row(
        stack: Stack, api: Api, signups: str) -> None:
    wid = create_workflow(stack, chain(1))
    user = stack.create_user()
    trigger_id = f"tr-{uuid.uuid4().hex[:8]}"
    attached = attach(api, stack, trigger_id, workflow_id=wid, table=signups, events=["insert"],
                      condition="new.plan <> 'spam'", input_mapping={"n": "new.email"},
                      owner_column="owner")
    assert attached.status_code == 200, attached.text
    body = attached.json()
    assert body["installed_sql"].startswith(f"create trigger \"supaflow_{trigger_id}\" after INSERT")
    assert "when (new.plan <> 'spam')" in body["installed_sql"]

    stack.sql(f"insert into {signups} (email, owner) values ('ada@example.test', %s)", (user.id,))
    stack.sql(f"insert into {signups} (email, plan) values ('bot@example.test', 'spam')")
    with stack.db() as conn, pytest.raises(psycopg.errors.RaiseException), conn.transaction():
        conn.execute(f"insert into {signups} (email) values ('gone@example.test')".encode())
        conn.execute("do $$ begin raise exception 'roll back'; end $$")
    deadline = time.monotonic() + 30
    while not (rows := stack.sql("select id::text, input_data, user_id::text, origin from"
                                 " workflow.jobs where workflow_id = %s", (wid,))):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert [(r[1], r[2], r[3]) for r in rows] == [({"n": "ada@example.test"}, user.id, "trigger")]
    assert wait_status(stack, rows[0][0], "completed", 60) == "completed"
    (created,) = stack.sql("select detail from workflow.job_events where job_id = %s"
                           " and event_type = 'job_created'", (rows[0][0],))
    assert created[0]["origin"] == {"type": "trigger", "trigger_id": trigger_id,
                                    "table": signups, "operation": "INSERT"}
    listed = api.request("GET", "/triggers", stack.sec.service_role_key).json()["triggers"]
    assert [t["failures"] for t in listed if t["trigger_id"] == trigger_id] == [0]

    detached = api.request("DELETE", f"/triggers/{trigger_id}", stack.sec.service_role_key)
    assert detached.json() == {"trigger_id": trigger_id, "detached": True}
    stack.sql(f"insert into {signups} (email) values ('late@example.test')")
    time.sleep(0.5)
    assert len(stack.sql("select 1 from workflow.jobs where workflow_id = %s", (wid,))) == 1


def test_a_failing_start_never_blocks_the_row_change(stack: Stack, api: Api, signups: str) -> None:
    wid = create_workflow(stack, chain(1))
    trigger_id = f"tr-{uuid.uuid4().hex[:8]}"
    assert attach(api, stack, trigger_id, workflow_id=wid, table=signups,
                  events=["INSERT", "UPDATE"]).status_code == 200
    stack.sql("update workflow.workflows set is_active = false where id = %s", (wid,))
    stack.sql(f"insert into {signups} (email) values ('still@example.test')")
    assert stack.sql(f"select count(*) from {signups}") == [(1,)], "the change committed"
    assert stack.sql("select count(*) from workflow.jobs where workflow_id = %s", (wid,)) == [(0,)]
    (listed,) = [t for t in api.request("GET", "/triggers", stack.sec.service_role_key).json()[
        "triggers"] if t["trigger_id"] == trigger_id]
    assert listed["failures"] == 1 and "not found" in listed["last_failure"]
    # A whole-row input when there is no mapping, for an update too.
    stack.sql("update workflow.workflows set is_active = true where id = %s", (wid,))
    stack.sql(f"update {signups} set confirmed = true")
    (input_data,) = stack.sql("select input_data from workflow.jobs where workflow_id = %s",
                              (wid,))[0]
    assert (input_data["operation"], input_data["old"]["confirmed"], input_data["new"]["confirmed"]) \
        == ("UPDATE", False, True)


@pytest.mark.parametrize(("change", "word"), [
    ({"table": "public.no_such_table"}, "table"),
    ({"input_mapping": {"n": "new.no_such_column"}}, "no_such_column"),
    ({"owner_column": "nobody_column"}, "nobody_column"),
    ({"condition": "new.plan = "}, "condition"),
    ({"condition": "old.plan = 'x'"}, "condition"),  # an INSERT has no OLD
    ({"events": ["TRUNCATE"]}, "events"),
    ({"workflow_id": "no-such-workflow"}, "workflow_id"),
    # Without a mapping the whole row is the input: never a row of auth.users.
    ({"table": "auth.users"}, "input_mapping: required on auth.users"),
    ({"table": "AUTH.users"}, "input_mapping: required on AUTH.users"),
    ({"condition": "true; drop table workflow.jobs"}, "condition"),
    ({"condition": "true) execute function pg_catalog.suppress_redundant_updates_trigger("},
     "condition"),
])
def test_a_bad_trigger_is_refused_naming_it_and_installs_nothing(
        stack: Stack, api: Api, signups: str, change: dict[str, Any], word: str) -> None:
    wid = create_workflow(stack, chain(1))
    body = {"workflow_id": wid, "table": signups, "events": ["INSERT"], **change}
    refused = attach(api, stack, f"tr-{uuid.uuid4().hex[:8]}", **body)
    assert refused.status_code == 400 and word in refused.json()["error"]["message"], refused.text
    assert stack.sql("select count(*) from pg_trigger where tgrelid = %s::regclass"
                     " and not tgisinternal", (signups,)) == [(0,)]


def test_triggers_are_the_service_roles(stack: Stack, api: Api, signups: str) -> None:
    wid = create_workflow(stack, chain(1))
    admin = stack.create_user()
    token = stack.token(admin.id, app_metadata={"supaflow_role": "admin"})
    refused = api.request("PUT", "/triggers/tr-x", token,
                          json={"workflow_id": wid, "table": signups, "events": ["INSERT"]})
    assert refused.status_code == 403
    assert api.request("GET", "/triggers", token).status_code == 403


def test_re_attaching_to_another_table_moves_the_trigger(stack: Stack, api: Api,
                                                        signups: str) -> None:
    wid = create_workflow(stack, chain(1))
    other = f"public.other_{uuid.uuid4().hex[:8]}"
    stack.sql(f"create table {other} (id bigint primary key)")
    try:
        trigger_id = f"tr-{uuid.uuid4().hex[:8]}"
        for table in (signups, other):
            assert attach(api, stack, trigger_id, workflow_id=wid, table=table,
                          events=["INSERT"]).status_code == 200
        installed = stack.sql("select tgrelid = %s::regclass from pg_trigger where tgname = %s",
                              (other, f"supaflow_{trigger_id}"))
        assert installed == [(True,)]
    finally:
        stack.sql(f"drop table {other}")
