"""Managing workflows, transformers and jobs over HTTP (DESIGN.md section 10), through the
real stack: drafts and versions, tenants and admins (through the functions and through
PostgREST), retry from the failed step, the event log, health."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared import health
from testkit.api import Api
from testkit.faults import postgrest_stopped
from testkit.invariants import assert_consistent_log
from testkit.jobs import start, wait_job, wait_status
from testkit.receiver import webhook_receiver
from testkit.stack import Stack, User
from testkit.workflows import WEBHOOK_SECRET_ENV

MIGRATIONS = Path(__file__).resolve().parent.parent / "supabase" / "migrations"


def member(stack: Stack, tenant: str | None = None, *, admin: bool = False) -> User:
    """A new user whose token carries a tenant and, for an admin, supaflow_role "admin"
    (in app_metadata, which only the server can set)."""
    user = stack.create_user()
    app_metadata: dict[str, Any] = {}
    if tenant is not None:
        app_metadata["tenant_id"] = tenant
    if admin:
        app_metadata["supaflow_role"] = "admin"
    return User(user.id, user.email, stack.token(user.id, app_metadata=app_metadata),
                stack.token(user.id, alg="ES256", app_metadata=app_metadata))


def fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def counts(stack: Stack) -> tuple[int, ...]:
    """Every table a refused request might write: the witness that it wrote nothing."""
    return tuple(stack.sql(
        "select (select count(*) from workflow.workflows), (select count(*) from"
        " workflow.workflow_versions), (select count(*) from workflow.workflow_drafts),"
        " (select count(*) from workflow.transformers), (select count(*) from workflow.jobs),"
        " (select count(*) from workflow.job_steps where attempt = 0 and status <> 'completed'),"
        " (select count(*) from workflow.job_events), (select coalesce(sum(version), 0)"
        " from workflow.workflows), (select count(*) from workflow.workflows where is_active)")[0])


def rest(stack: Stack, path: str, token: str) -> list[dict[str, Any]]:
    """A table read through PostgREST, as supabase-js would make it with this token."""
    response = httpx.get(f"{stack.api_url}/rest/v1{path}", timeout=30, headers={
        "apikey": stack.sec.anon_key, "Authorization": f"Bearer {token}",
        "Accept-Profile": "workflow"})
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()
    return rows


def chain_of(transformers: list[str], output: Any = None) -> dict[str, Any]:
    """Steps in a row (each depends on the one before), each reading the input's n."""
    steps = [{"id": f"s{i + 1}", "transformer": t, "inputs": {"n": "$.input.n"}}
             for i, t in enumerate(transformers)]
    definition: dict[str, Any] = {
        "input_schema": {"type": "object", "required": ["n"],
                         "properties": {"n": {"type": "integer"}}},
        "steps": steps,
    }
    if output is not None:
        definition["output"] = output
    return definition


class Admin:
    """Calls the management routes with one caller's token, each answer checked against
    docs/openapi.yaml."""

    def __init__(self, api: Api, token: str) -> None:
        self.api, self.token = api, token

    def put_workflow(self, wid: str, definition: dict[str, Any], **extra: Any) -> httpx.Response:
        return self.api.request("PUT", f"/workflows/{wid}", self.token,
                                json={"definition": definition, **extra})

    def publish(self, wid: str, **kwargs: Any) -> httpx.Response:
        return self.api.request("POST", f"/workflows/{wid}/publish", self.token, **kwargs)

    def put_transformer(self, tid: str, type_: str, config: dict[str, Any],
                        **extra: Any) -> httpx.Response:
        return self.api.request("PUT", f"/transformers/{tid}", self.token,
                                json={"type": type_, "config": config, **extra})

    def deploy(self, wid: str, definition: dict[str, Any], **extra: Any) -> int:
        assert self.put_workflow(wid, definition, **extra).status_code == 200
        response = self.publish(wid)
        assert response.status_code == 200, response.text
        return int(response.json()["version"])


@pytest.fixture
def service(api: Api, stack: Stack) -> Admin:
    return Admin(api, stack.sec.service_role_key)


# Drafts and versions -------------------------------------------------------------------


def test_draft_publish_edit_publish_and_a_running_job_keeps_its_version(
        stack: Stack, api: Api, service: Admin) -> None:
    user = stack.create_user()
    wid = fresh("wf")
    with webhook_receiver() as receiver:
        slow = fresh("t-slow")
        response = service.put_transformer(slow, "webhook_call", {
            "url": receiver.url("/slow/1500"), "secret_env_var": WEBHOOK_SECRET_ENV})
        assert response.status_code == 200 and response.json()["created"] is True, response.text
        assert response.json()["target_function"] == "execute-webhook-call"

        # A draft is invisible to starts and to users.
        v1 = chain_of([slow, "transform"], {"v1": "$.steps.s2.output.n"})
        response = service.put_workflow(wid, v1, description="first")
        assert response.status_code == 200, response.text
        assert response.json()["version"] is None
        assert response.json()["draft"]["definition"]["steps"][0]["retry"]["max_retries"] == 3
        assert api.start(user.token, {"workflow_id": wid, "input_data": {"n": 1}}).status_code == 404
        listed = api.request("GET", "/workflows", user.token).json()["workflows"]
        assert wid not in [w["workflow_id"] for w in listed]

        published = service.publish(wid, json={"expected_version": 0})
        assert published.status_code == 200, published.text
        assert published.json() == {"workflow_id": wid, "version": 1, "new_version": True}
        assert published.headers["etag"] == '"1"'

        first = start(api, user, wid, {"n": 1})
        wait_status(stack, first, "running")
        # Editing the draft while the job runs changes nothing for starts.
        v2 = chain_of([slow, "transform"], {"v2": "$.steps.s2.output.n"})
        assert service.put_workflow(wid, v2, description="second").status_code == 200
        still_v1 = start(api, user, wid, {"n": 2})
        assert service.publish(wid, headers={"If-Match": '"1"'}).json()["version"] == 2
        second = start(api, user, wid, {"n": 3})
        assert stack.sql("select status from workflow.jobs where id = %s", (first,))[0][0] \
            == "running", "the first job must still be running when v2 is published"

        # A publish that raced another: 409, and nothing changes.
        assert service.put_workflow(wid, chain_of(["transform"])).status_code == 200
        before = counts(stack)
        conflict = service.publish(wid, headers={"If-Match": '"1"'})
        assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "version_conflict"
        assert counts(stack) == before

        finals = {job: wait_job(api, user, job, 30) for job in (first, still_v1, second)}
    assert [(j["status"], j["workflow_version"], j["final_result"]) for j in finals.values()] == [
        ("completed", 1, {"v1": 1}), ("completed", 1, {"v1": 2}), ("completed", 2, {"v2": 3})]

    shown = api.request("GET", f"/workflows/{wid}", stack.sec.service_role_key)
    body = shown.json()
    assert shown.headers["etag"] == '"2"' and body["version"] == 2 and body["active"] is True
    assert [(v["version"], v["description"], v["published_by"]) for v in body["versions"]] == [
        (2, "second", "service_role"), (1, "first", "service_role")]
    assert body["draft"]["definition"]["steps"][0]["transformer"] == "transform"
    as_user = api.request("GET", f"/workflows/{wid}", user.token).json()
    assert set(as_user) == {"workflow_id", "description", "version", "input_schema"}
    assert as_user["input_schema"]["required"] == ["n"]

    # Deactivated: new starts 404, the workflow is gone for users, an admin still sees it.
    assert api.request("DELETE", f"/workflows/{wid}", stack.sec.service_role_key).json()[
        "active"] is False
    assert api.start(user.token, {"workflow_id": wid, "input_data": {"n": 4}}).status_code == 404
    assert api.request("GET", f"/workflows/{wid}", user.token).status_code == 404
    assert api.request("GET", f"/workflows/{wid}", stack.sec.service_role_key).json()[
        "active"] is False


def test_an_unchanged_publish_makes_no_version_and_reactivates(
        stack: Stack, api: Api, service: Admin) -> None:
    wid = fresh("wf")
    assert service.deploy(wid, chain_of(["transform"])) == 1
    api.request("DELETE", f"/workflows/{wid}", stack.sec.service_role_key)
    assert service.put_workflow(wid, chain_of(["transform"])).status_code == 200
    assert service.publish(wid).json() == {"workflow_id": wid, "version": 1, "new_version": False}
    user = stack.create_user()
    assert wait_job(api, user, start(api, user, wid, {"n": 5}))["final_result"] == {"n": 5}
    no_draft = service.publish(wid)
    assert no_draft.status_code == 409 and no_draft.json()["error"]["code"] == "no_draft"


# Tenants -------------------------------------------------------------------------------


def test_tenants_see_and_control_only_their_own(stack: Stack, api: Api, service: Admin) -> None:
    a, b = fresh("tenant-a"), fresh("tenant-b")
    user_a, user_b = member(stack, a), member(stack, b)
    admin_a, admin_b = member(stack, a, admin=True), member(stack, b, admin=True)
    wa, wb, wg = fresh("wf-a"), fresh("wf-b"), fresh("wf-global")
    Admin(api, admin_a.token).deploy(wa, chain_of(["transform"]))
    Admin(api, admin_b.token).deploy(wb, chain_of(["transform"]))
    service.deploy(wg, chain_of(["transform"]))
    assert stack.sql("select id, tenant_id from workflow.workflows where id in (%s, %s, %s)"
                     " order by tenant_id nulls first", (wa, wb, wg)) == [(wg, None), (wa, a), (wb, b)]

    # Workflows: each tenant's users see the global ones and their own.
    for user, own, other in ((user_a, wa, wb), (user_b, wb, wa)):
        seen = {w["workflow_id"] for w in api.request("GET", "/workflows", user.token).json()[
            "workflows"]}
        assert {own, wg} <= seen and other not in seen
        assert api.request("GET", f"/workflows/{other}", user.token).status_code == 404
        assert api.start(user.token, {"workflow_id": other, "input_data": {"n": 1}}).status_code \
            == 404
        via_rest = {r["id"] for r in rest(stack, "/workflows?select=id", user.token)}
        assert {own, wg} <= via_rest and other not in via_rest

    job_a, job_b = start(api, user_a, wa, {"n": 1}), start(api, user_b, wb, {"n": 2})
    job_ag = start(api, user_a, wg, {"n": 3})
    for job in (job_a, job_b, job_ag):
        wait_status(stack, job, "completed")
    assert stack.sql("select tenant_id from workflow.jobs where id = %s", (job_ag,))[0][0] == a

    # Jobs: users their own, admins their tenant's, nobody across tenants.
    assert api.request("GET", f"/jobs/{job_b}", user_a.token).status_code == 404
    assert api.request("GET", f"/jobs/{job_a}", admin_a.token).status_code == 200
    assert api.request("GET", f"/jobs/{job_a}", admin_b.token).status_code == 404
    tenant_jobs = {j["job_id"] for j in api.request(
        "GET", "/jobs?scope=tenant&limit=200", admin_a.token).json()["jobs"]}
    assert {job_a, job_ag} <= tenant_jobs and job_b not in tenant_jobs
    assert [j["job_id"] for j in api.request("GET", "/jobs?scope=tenant", user_a.token).json()[
        "jobs"]] == [job_ag, job_a]  # a user's scope is theirs, whatever they ask
    assert api.request("GET", f"/jobs/{job_a}/events", admin_a.token).status_code == 200
    assert api.request("GET", f"/jobs/{job_a}/events", admin_b.token).status_code == 404
    assert api.request("POST", f"/jobs/{job_b}/cancel", admin_a.token).status_code == 404
    assert api.request("POST", f"/jobs/{job_b}/retry", admin_a.token).status_code == 404
    # ... and through PostgREST, by the same rules.
    assert {r["id"] for r in rest(stack, f"/jobs?select=id&id=in.({job_a},{job_b})",
                                  admin_a.token)} == {job_a}
    assert {r["id"] for r in rest(stack, f"/jobs?select=id&id=in.({job_a},{job_b})",
                                  user_b.token)} == {job_b}
    assert rest(stack, f"/job_events?select=seq&job_id=eq.{job_a}", admin_b.token) == []
    assert len(rest(stack, f"/job_events?select=seq&job_id=eq.{job_a}", admin_a.token)) > 3
    assert rest(stack, "/transformers?select=id", user_a.token) == []
    assert "transform" not in {r["id"] for r in rest(stack, "/transformers?select=id",
                                                     admin_a.token)}  # global: not theirs
    assert rest(stack, f"/workflow_versions?select=version&workflow_id=eq.{wa}", user_a.token) == []
    assert rest(stack, f"/workflow_versions?select=version&workflow_id=eq.{wa}",
                admin_b.token) == []

    # Admin routes: a tenant's admin manages its workflows only; a user none.
    before = counts(stack)
    assert Admin(api, admin_a.token).put_workflow(wb, chain_of(["transform"])).status_code == 404
    assert Admin(api, admin_a.token).publish(wb).status_code == 404
    assert api.request("DELETE", f"/workflows/{wb}", admin_a.token).status_code == 404
    assert api.request("DELETE", f"/workflows/{wg}", admin_a.token).status_code == 404
    assert Admin(api, admin_a.token).put_workflow(
        fresh("wf"), chain_of(["transform"]), tenant_id=b).status_code == 403
    for token in (user_a.token, stack.token(user_a.id)):
        refused = Admin(api, token).put_workflow(fresh("wf"), chain_of(["transform"]))
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
        assert api.request("GET", "/transformers", token).status_code == 403
    assert counts(stack) == before
    # A tenant's transformer is not usable by another tenant's workflows.
    ta = fresh("t-a")
    assert Admin(api, admin_a.token).put_transformer(ta, "transform", {}).json()["tenant_id"] == a
    unknown = Admin(api, admin_b.token).put_workflow(fresh("wf"), chain_of([ta]))
    assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "unknown_transformer"
    assert ta not in {t["transformer_id"] for t in api.request(
        "GET", "/transformers", admin_b.token).json()["transformers"]}
    before = counts(stack)
    taken = Admin(api, admin_b.token).put_transformer(ta, "transform", {"fail": {}})
    assert taken.status_code == 404, taken.text
    assert counts(stack) == before
    # A global transformer's config is not a tenant admin's to read.
    hook = fresh("t-hook")
    service.put_transformer(hook, "webhook_call", {"url": "https://hooks.example.com/x",
                                                   "secret_env_var": WEBHOOK_SECRET_ENV,
                                                   "headers": {"X-Api-Key": "global-only"}})
    listed = {t["transformer_id"]: t for t in api.request(
        "GET", "/transformers", admin_a.token).json()["transformers"]}
    assert listed[hook]["config"] is None and listed[ta]["config"] == {}
    assert rest(stack, f"/transformers?select=id&id=eq.{hook}", admin_a.token) == []
    # Drafts and steps through PostgREST, across tenants.
    draft = fresh("wf-draft")
    Admin(api, admin_a.token).put_workflow(draft, chain_of(["transform"]))
    assert [r["workflow_id"] for r in rest(
        stack, f"/workflow_drafts?select=workflow_id&workflow_id=eq.{draft}", admin_a.token)] == [draft]
    for token in (admin_b.token, user_a.token):
        assert rest(stack, f"/workflow_drafts?select=workflow_id&workflow_id=eq.{draft}", token) == []
    assert rest(stack, f"/job_steps?select=step_id&job_id=eq.{job_a}", admin_b.token) == []
    assert rest(stack, f"/job_steps?select=step_id&job_id=eq.{job_a}", user_b.token) == []
    assert [r["step_id"] for r in rest(stack, f"/job_steps?select=step_id&job_id=eq.{job_a}",
                                       admin_a.token)] == ["s1"]


# Retry and the event log ---------------------------------------------------------------


def test_retry_resumes_from_the_failed_step(stack: Stack, api: Api, service: Admin) -> None:
    user, stranger = stack.create_user(), stack.create_user()
    flaky = fresh("t-flaky")
    service.put_transformer(flaky, "transform", {"fail": {"retryable": False, "message": "down"}})
    wid = fresh("wf")
    service.deploy(wid, chain_of(["transform", flaky, "transform"]))
    job_id = start(api, user, wid, {"n": 7})
    failed = wait_job(api, user, job_id)
    assert failed["status"] == "failed" and "down" in failed["error_message"]
    step_one = stack.sql("select attempt, output, completed_at from workflow.job_steps"
                         " where job_id = %s and step_id = 's1'", (job_id,))[0]

    refused = api.request("POST", f"/jobs/{job_id}/retry", stranger.token)
    assert refused.status_code == 404
    service.put_transformer(flaky, "transform", {})  # the cause is fixed
    retried = api.request("POST", f"/jobs/{job_id}/retry", user.token)
    assert retried.status_code == 202, retried.text
    assert retried.json() == {"job_id": job_id, "status": "pending", "retried_steps": ["s2", "s3"]}
    done = wait_job(api, user, job_id)
    assert done["status"] == "completed" and done["final_result"] == {"n": 7}
    assert done["error_message"] is None and done["workflow_version"] == 1
    assert stack.sql("select attempt, output, completed_at from workflow.job_steps"
                     " where job_id = %s and step_id = 's1'", (job_id,))[0] == step_one
    assert {s["step_id"]: s["attempt"] for s in done["steps"]} == {"s1": 1, "s2": 1, "s3": 1}
    again = api.request("POST", f"/jobs/{job_id}/retry", user.token)
    assert again.status_code == 409 and again.json()["error"]["code"] == "not_retryable"

    # The log: gap-free, step one started once, the retry says who and what.
    log = assert_consistent_log(stack, done)
    assert [e["step_id"] for e in log if e["event_type"] == "step_started"].count("s1") == 1
    retry = [e for e in log if e["event_type"] == "job_pending" and e["from_status"] == "failed"]
    assert len(retry) == 1
    assert retry[0]["detail"] == {"retried_by": user.id, "steps": ["s2", "s3"]}
    # GET /jobs/{id}/events pages through the same log.
    paged: list[dict[str, Any]] = []
    after: int | None = 0
    while after is not None:
        page = api.request("GET", f"/jobs/{job_id}/events?limit=4&after={after}", user.token).json()
        paged += page["events"]
        after = page["next_after"]
    assert [(e["seq"], e["event_type"], e["step_id"]) for e in paged] == [
        (e["seq"], e["event_type"], e["step_id"]) for e in log]


def test_a_cancelled_job_is_retried_by_its_tenant_admin(stack: Stack, api: Api,
                                                        service: Admin) -> None:
    tenant = fresh("tenant")
    user, admin = member(stack, tenant), member(stack, tenant, admin=True)
    with webhook_receiver() as receiver:
        slow = fresh("t-slow")
        service.put_transformer(slow, "webhook_call", {
            "url": receiver.url("/slow/800"), "secret_env_var": WEBHOOK_SECRET_ENV})
        wid = fresh("wf")
        service.deploy(wid, chain_of([slow, "transform"]))
        job_id = start(api, user, wid, {"n": 1})
        wait_status(stack, job_id, "running")
        assert api.request("POST", f"/jobs/{job_id}/cancel", admin.token).json()["cancelled"]
        retried = api.request("POST", f"/jobs/{job_id}/retry", admin.token)
        assert retried.status_code == 202, retried.text
        done = wait_job(api, user, job_id)
    assert done["status"] == "completed"
    history = [(h["status"], h.get("by") or h.get("retried_by")) for h in done["state_history"]]
    assert ("cancelled", admin.id) in history and ("pending", admin.id) in history


# Health --------------------------------------------------------------------------------


def test_health_reports_each_check_and_503_while_postgrest_is_down(stack: Stack, api: Api) -> None:
    ok = api.request("GET", "/health")
    assert ok.status_code == 200, ok.text
    assert {k: v["ok"] for k, v in ok.json()["checks"].items()} == {
        "database": True, "migrations": True, "cron": True, "orchestrator": True}
    assert stack.sec.service_role_key not in ok.text
    with postgrest_stopped(stack.cfg):
        down = api.request("GET", "/health")
    assert down.status_code == 503 and down.json()["checks"]["database"]["ok"] is False
    deadline = time.monotonic() + 30
    while (back := api.request("GET", "/health")).status_code != 200:
        assert time.monotonic() < deadline, back.text
        time.sleep(0.2)


def test_health_is_503_without_the_cron_job(stack: Stack, api: Api, no_cron: None) -> None:
    down = api.request("GET", "/health")
    assert down.status_code == 503 and down.json()["checks"]["cron"]["ok"] is False


def test_health_knows_every_migration() -> None:
    files = sorted(p.name.split("_", 1)[0] for p in MIGRATIONS.glob("*.sql"))
    assert list(health.MIGRATIONS) == files


# Listing jobs --------------------------------------------------------------------------


def test_list_jobs_filters_by_workflow_status_and_time(stack: Stack, api: Api,
                                                      service: Admin) -> None:
    user = stack.create_user()
    wid, other = fresh("wf"), fresh("wf")
    service.deploy(wid, chain_of(["transform"]))
    service.deploy(other, chain_of(["transform"]))
    early = [start(api, user, wid, {"n": i}) for i in range(3)]
    (cut,) = stack.sql("select now()")[0]
    late = [start(api, user, wid, {"n": 9}), start(api, user, other, {"n": 9})]
    for job in early + late:
        wait_status(stack, job, "completed")

    def listed(query: str) -> list[str]:
        return [j["job_id"] for j in api.request("GET", f"/jobs?{query}", user.token).json()["jobs"]]

    assert listed(f"workflow_id={wid}") == [late[0], *reversed(early)]
    query = httpx.QueryParams({"workflow_id": wid, "created_before": cut.isoformat()})
    assert listed(str(query)) == list(reversed(early))
    query = httpx.QueryParams({"created_after": cut.isoformat()})
    assert listed(str(query)) == list(reversed(late))
    assert listed("status=failed") == []
    bad = api.request("GET", "/jobs?created_after=yesterday", user.token)
    assert bad.status_code == 400 and "created_after" in bad.json()["error"]["message"]


# Hostile input: a clear 4xx, nothing written ------------------------------------------

GOOD = chain_of(["transform"])
CYCLE = {"steps": [{"id": "a", "transformer": "transform", "depends_on": ["b"]},
                   {"id": "b", "transformer": "transform", "depends_on": ["a"]}]}
ADMIN_ROUTES = [("PUT", "/workflows/{wid}", {"json": {"definition": GOOD}}),
                ("POST", "/workflows/{wid}/publish", {}),
                ("DELETE", "/workflows/{wid}", {}),
                ("GET", "/transformers", {}),
                ("PUT", "/transformers/{tid}", {"json": {"type": "transform", "config": {}}})]
EVERY_ROUTE = [*ADMIN_ROUTES, ("GET", "/workflows", {}), ("GET", "/workflows/{wid}", {}),
               ("POST", "/jobs/{job}/retry", {}), ("GET", "/jobs/{job}/events", {}),
               ("GET", "/jobs", {}), ("POST", "/jobs/{job}/cancel", {})]
BAD = [  # (method, path, request kwargs, status, error code, a word the message must hold)
    ("PUT", "/workflows/{wid}", {"content": b"{not json"}, 400, "invalid_json", "malformed"),
    ("PUT", "/workflows/{wid}", {"json": [GOOD]}, 400, "invalid_json", "object"),
    ("PUT", "/workflows/{wid}", {"json": {}}, 400, "bad_request", "definition"),
    ("PUT", "/workflows/{wid}", {"json": {"definition": GOOD, "colour": 1}}, 400, "bad_request",
     "colour"),
    ("PUT", "/workflows/{wid}", {"json": {"definition": "steps"}}, 400, "bad_request",
     "definition"),
    ("PUT", "/workflows/{wid}", {"json": {"definition": GOOD, "description": 7}}, 400,
     "bad_request", "description"),
    ("PUT", "/workflows/{wid}", {"json": {"definition": CYCLE}}, 400, "invalid_definition",
     "cycle"),
    ("PUT", "/workflows/{wid}", {"json": {"definition": {"steps": [
        {"id": "a", "transformer": "transform", "timeout_s": 5000}]}}}, 400,
     "invalid_definition", "definition.steps.0.timeout_s"),
    ("PUT", "/workflows/{wid}", {"json": {"definition": {"steps": [
        {"id": "a", "transformer": "no-such-transformer"}]}}}, 422, "unknown_transformer",
     "steps.0.transformer"),
    ("PUT", "/workflows/{wid}", {"json": {"definition": {"steps": [
        {"id": "a", "transformer": "transform", "inputs": {"x": "x" * 2_000_000}}]}}}, 413,
     "payload_too_large", "exceeds"),
    ("PUT", "/workflows/{wid}", {"content": b"[" * 5000 + b"]" * 5000}, 400, "invalid_json",
     "nested"),
    ("PUT", "/workflows/bad%20id", {"json": {"definition": GOOD}}, 400, "bad_request",
     "workflow id"),
    ("PUT", "/workflows/" + "w" * 129, {"json": {"definition": GOOD}}, 400, "bad_request",
     "workflow id"),
    ("POST", "/workflows/{wid}/publish", {}, 404, "not_found", "not found"),
    ("POST", "/workflows/{wid}/publish", {"headers": {"If-Match": "yesterday"}}, 400,
     "bad_request", "If-Match"),
    ("POST", "/workflows/{wid}/publish", {"json": {"expected_version": "1"}}, 400,
     "bad_request", "expected_version"),
    ("POST", "/workflows/{wid}/publish", {"json": {"expected_version": -1}}, 400,
     "bad_request", "expected_version"),
    ("DELETE", "/workflows/{wid}", {}, 404, "not_found", "not found"),
    ("GET", "/workflows/{wid}", {}, 404, "not_found", "not found"),
    ("GET", "/workflows?colour=red", {}, 400, "bad_request", "colour"),
    ("PUT", "/transformers/{tid}", {"json": {"type": "teleport", "config": {}}}, 400,
     "invalid_config", "type"),
    ("PUT", "/transformers/{tid}", {"json": {"type": "transform", "config": {"colour": 1}}},
     400, "invalid_config", "config.colour"),
    ("PUT", "/transformers/{tid}", {"json": {"type": "webhook_call", "config": {
        "secret_env_var": "sk-live-1234567890abcdef"}}}, 400, "invalid_config",
     "config.secret_env_var"),
    ("PUT", "/transformers/{tid}", {"json": {"type": "gemini_prompt", "config": {
        "model": "m", "api_key": "AIza-secret"}}}, 400, "invalid_config", "config.api_key"),
    ("PUT", "/transformers/{tid}", {"json": {"type": "http_download", "config": {
        "bucket": "b", "key_template": "{job_id}/{password}"}}}, 400, "invalid_config",
     "config.key_template"),
    ("PUT", "/transformers/{tid}", {"json": {"config": {}}}, 400, "bad_request", "type"),
    ("PUT", "/transformers/{tid}", {"json": {"type": "webhook_call", "config": {
        "url": "https://example.com/", "secret_env_var": "SUPABASE_SERVICE_ROLE_KEY"}}}, 400,
     "invalid_config", "config.secret_env_var"),
    ("PUT", "/transformers/{tid}", {"json": {"type": "gemini_prompt", "config": {
        "model": "m", "api_key_env_var": "SUPAFLOW_INTERNAL_TOKEN"}}}, 400, "invalid_config",
     "config.api_key_env_var"),
    ("PUT", "/transformers/{tid}", {"json": {"type": "transform", "config": {
        "fail": {"message": "x" * 2_000_000}}}}, 413, "payload_too_large", "exceeds"),
    ("PUT", "/transformers/{tid}", {"json": {"type": "transform", "config": {},
                                              "description": "d" * 2001}}, 400, "bad_request",
     "description"),
    ("POST", "/jobs/not-a-uuid/retry", {}, 400, "bad_request", "UUID"),
    ("POST", "/jobs/{job}/retry", {}, 404, "not_found", "not found"),
    ("GET", "/jobs/{job}/events", {}, 404, "not_found", "not found"),
    ("GET", "/jobs/{job}/events?after=-1", {}, 400, "bad_request", "after"),
    ("GET", "/jobs/{job}/events?limit=0", {}, 400, "bad_request", "limit"),
    ("GET", "/jobs/{job}/events?colour=red", {}, 400, "bad_request", "colour"),
    ("GET", "/jobs?scope=everyone", {}, 400, "bad_request", "scope"),
    ("GET", "/jobs/{job}/events?after=9999999999", {}, 400, "bad_request", "after"),
    ("POST", "/workflows/{wid}/publish", {"json": {"expected_version": 99_999_999_999}}, 400,
     "bad_request", "expected_version"),
    ("POST", "/workflows/{wid}/publish", {"headers": {"If-Match": 'W/"1"'}}, 400,
     "bad_request", "If-Match"),
    ("PUT", "/workflows/{wid}", {"json": {"definition": GOOD, "tenant_id": "a\u0001b"}}, 400,
     "bad_request", "tenant_id"),
    ("PUT", "/transformers/{tid}", {"json": {"type": "transform", "config": {},
                                              "tenant_id": "a\nb"}}, 400, "bad_request",
     "tenant_id"),
]


def _path(template: str) -> str:
    return template.format(wid=fresh("wf"), tid=fresh("t"), job=uuid.uuid4())


@pytest.mark.parametrize(("method", "template", "kwargs", "status", "code", "word"), BAD,
                         ids=[f"{m} {p} {s} {c}" for m, p, _, s, c, _ in BAD])
def test_bad_input_is_refused_naming_it_and_writes_nothing(
        stack: Stack, api: Api, method: str, template: str, kwargs: dict[str, Any], status: int,
        code: str, word: str) -> None:
    before = counts(stack)
    path = _path(template)
    response = api.request(method, path, stack.sec.service_role_key, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and word.lower() in error["message"].lower(), error
    assert counts(stack) == before


@pytest.mark.parametrize(("method", "template", "kwargs"), EVERY_ROUTE,
                         ids=[f"{m} {p}" for m, p, _ in EVERY_ROUTE])
def test_every_route_needs_a_valid_token(stack: Stack, api: Api, method: str, template: str,
                                         kwargs: dict[str, Any]) -> None:
    user = stack.create_user()
    forged = stack.token(user.id) + "x"
    now = int(time.time())
    wrong_key = __import__("jwt").encode(
        {"sub": user.id, "role": "authenticated", "aud": "authenticated", "exp": now + 60},
        "not-the-project-secret-but-long-enough-to-sign-with", algorithm="HS256")
    before = counts(stack)
    for token in (None, forged, wrong_key, stack.sec.anon_key):
        response = api.request(method, _path(template), token, **kwargs)
        assert response.status_code == 401, (token, response.text)
    assert counts(stack) == before


@pytest.mark.parametrize(("method", "template", "kwargs"), ADMIN_ROUTES,
                         ids=[f"{m} {p}" for m, p, _ in ADMIN_ROUTES])
def test_admin_routes_refuse_users(stack: Stack, api: Api, method: str, template: str,
                                   kwargs: dict[str, Any]) -> None:
    before = counts(stack)
    for user in (stack.create_user(), member(stack, fresh("tenant"))):
        response = api.request(method, _path(template), user.token, **kwargs)
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "forbidden"
    assert counts(stack) == before


def test_a_definition_written_in_sql_is_checked_too(stack: Stack) -> None:
    """SQL users go around the API: the database still refuses what the engine cannot run."""
    with pytest.raises(Exception, match="not in normalised form"):
        stack.sql("insert into workflow.workflow_drafts (workflow_id, definition, updated_by)"
                  " values (%s, %s, 'sql')", (fresh("wf"), '{"steps": []}'))
    with pytest.raises(Exception, match="object_id"):
        stack.sql("insert into workflow.transformers (id, type, target_function)"
                  " values ('no spaces allowed', 'transform', 'execute-transform')")


def test_concurrent_publishes_of_one_version_make_one(stack: Stack, api: Api,
                                                      service: Admin) -> None:
    """Two admins publish the draft they both saw at version 1: one wins, one gets a 409,
    whichever order the database takes them in."""
    wid = fresh("wf")
    service.deploy(wid, chain_of(["transform"]))
    draft = service.put_workflow(wid, chain_of(["transform", "transform"])).json()["draft"]
    headers = {"Authorization": f"Bearer {stack.sec.service_role_key}", "If-Match": '"1"'}
    body = {"draft_revision": draft["revision"]}
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: httpx.post(
            f"{stack.api_url}/workflows/{wid}/publish", headers=headers, json=body, timeout=30),
            range(4)))
    assert sorted(a.status_code for a in answers) == [200, 409, 409, 409], [a.text for a in answers]
    assert stack.sql("select version from workflow.workflows where id = %s", (wid,))[0][0] == 2
    assert stack.sql("select count(*) from workflow.workflow_versions where workflow_id = %s",
                     (wid,))[0][0] == 2


def test_a_draft_changed_since_it_was_read_is_not_published(stack: Stack, api: Api,
                                                          service: Admin) -> None:
    wid = fresh("wf")
    seen = service.put_workflow(wid, chain_of(["transform"])).json()["draft"]["revision"]
    changed = service.put_workflow(wid, chain_of(["transform", "transform"])).json()["draft"]
    assert changed["revision"] == seen + 1
    before = counts(stack)
    refused = service.publish(wid, json={"draft_revision": seen})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "draft_changed"
    assert counts(stack) == before
    assert service.publish(wid, json={"draft_revision": changed["revision"]}).status_code == 200


def test_retrying_a_job_that_failed_while_finishing_finishes_it_again(
        stack: Stack, api: Api, service: Admin) -> None:
    """Every step complete, the final result over the bounds: the retry reruns no step and
    the orchestrator's sweep finishes the job again (here: fails it again, for the same
    reason), instead of leaving it pending forever."""
    half = {"id": "a", "transformer": "transform", "depends_on": [], "inputs": {"v": "$.input.x"}}
    wid = fresh("wf")
    service.deploy(wid, {"steps": [half, {**half, "id": "b"}],
                         "output": {"a": "$.steps.a.output", "b": "$.steps.b.output"}})
    user = stack.create_user()
    job_id = start(api, user, wid, {"x": "z" * 600_000})
    first = wait_job(api, user, job_id)
    assert first["status"] == "failed" and first["error_message"].startswith("the final result")
    retried = api.request("POST", f"/jobs/{job_id}/retry", user.token)
    assert retried.status_code == 202, retried.text
    assert retried.json() == {"job_id": job_id, "status": "running", "retried_steps": []}
    again = wait_job(api, user, job_id, 90)
    assert again["status"] == "failed" and again["error_message"].startswith("the final result")
    assert {s["step_id"]: s["attempt"] for s in again["steps"]} == {"a": 1, "b": 1}
