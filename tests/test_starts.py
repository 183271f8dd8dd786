"""Starting a job from SQL (workflow.start_workflow, DESIGN.md section 11): in the
caller's transaction, for a user or for nobody, with start_job's bounds and idempotency,
the orchestrator kicked through net.http_post only once the transaction commits."""

from __future__ import annotations

import re
import time
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
    assert net_response(stack, kick_id)[0] == 200
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
    assert again == {**first, "existing": True}
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
