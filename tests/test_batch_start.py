"""POST /workflows/start with {"jobs": [...]}: many starts in one request and one transaction,
each with a single start's validation, idempotency and rate limit, answered item by item."""

from __future__ import annotations

from typing import Any

from testkit.api import Api
from testkit.jobs import wait_job
from testkit.stack import Stack
from testkit.workflows import create_workflow

NAMED = {
    "steps": [{"id": "only", "transformer": "transform", "inputs": {"name": "$.input.name"}}],
    "input_schema": {"type": "object", "required": ["name"],
                     "properties": {"name": {"type": "string"}}},
}


def test_a_batch_is_answered_item_by_item(stack: Stack, api: Api) -> None:
    user = stack.create_user()
    wid = create_workflow(stack, NAMED)
    earlier = api.start(user.token, {"workflow_id": wid, "input_data": {"name": "e"},
                                     "idempotency_key": "earlier"}).json()["job_id"]
    jobs: list[dict[str, Any]] = [
        {"workflow_id": wid, "input_data": {"name": "a"}},
        {"workflow_id": wid, "input_data": {"name": 3}},
        {"workflow_id": "no-such-workflow", "input_data": {}},
        {"workflow_id": wid, "input_data": {"name": "e"}, "idempotency_key": "earlier"},
        {"workflow_id": wid, "input_data": {"name": "other"}, "idempotency_key": "earlier"},
        {"workflow_id": wid, "input_data": {"name": "b"}, "idempotency_key": "new"},
    ]
    response = api.start(user.token, {"jobs": jobs})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["outcome"] for r in results] == [
        "created", "refused", "refused", "existing", "refused", "created"]
    assert [r["error"]["code"] for r in results if r["outcome"] == "refused"] == [
        "invalid_input", "not_found", "idempotency_conflict"]
    assert "input_data.name" in results[1]["error"]["message"]
    assert results[3]["job_id"] == earlier
    created = [r["job_id"] for r in results if r["outcome"] == "created"]
    assert stack.sql("select count(*) from workflow.jobs where user_id = %s", (user.id,)) == [(3,)]
    for job_id in created:
        assert wait_job(api, user, job_id)["status"] == "completed"
    # The same batch again: idempotent where a key was given.
    again = api.start(user.token, {"jobs": jobs[5:]}).json()["results"]
    assert [(r["outcome"], r["job_id"]) for r in again] == [("existing", results[5]["job_id"])]
    assert "kick" not in results[0] and "kick" not in results[5]


def test_each_start_of_a_batch_counts_against_the_rate_limit(stack: Stack, api: Api) -> None:
    user = stack.create_user()
    wid = create_workflow(stack, NAMED)
    stack.sql("insert into workflow.rate_limits (user_id, max_starts, window_seconds)"
              " values (%s, 3, 60)", (user.id,))
    results = api.start(user.token, {"jobs": [
        {"workflow_id": wid, "input_data": {"name": str(i)}} for i in range(5)]}).json()["results"]
    assert [r["outcome"] for r in results] == ["created"] * 3 + ["refused"] * 2
    assert {r["error"]["status"] for r in results[3:]} == {429}


def test_a_malformed_batch_writes_nothing(stack: Stack, api: Api) -> None:
    user = stack.create_user()
    wid = create_workflow(stack, NAMED)
    one = {"workflow_id": wid, "input_data": {"name": "n"}}
    for body, words in (({"jobs": []}, "jobs"), ({"jobs": [one] * 1001}, "jobs"),
                        ({"jobs": [{**one, "extra": 1}]}, "jobs.0.extra"),
                        ({"jobs": [one], "other": 1}, "other"), ({"jobs": "x"}, "jobs"),
                        ({"jobs": [{"workflow_id": "a\rb", "input_data": {}}]}, "control")):
        response = api.start(user.token, body)
        if response.status_code == 200:  # a control character refuses only its item
            assert response.json()["results"][0]["error"]["status"] == 400
            assert words in response.json()["results"][0]["error"]["message"]
            continue
        assert response.status_code == 400, (body, response.text)
        assert words in response.json()["error"]["message"], response.text
    assert stack.sql("select count(*) from workflow.jobs where user_id = %s", (user.id,)) == [(0,)]
