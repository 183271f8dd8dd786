"""The dashboard (GET /dashboard) in a real headless Chromium (Debian's, driven by
Playwright) against the real stack: sign in, see a completed and a failed job, open the
failed job's DAG, retry it and watch it complete. Screenshots go to .artifacts/ and are
checked for content (not blank, the job's id on the page)."""

from __future__ import annotations

import re
import shutil
import struct
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from testkit.jobs import wait_status
from testkit.stack import Stack
from testkit.workflows import chain, create_workflow, failing_transformer

SCREENSHOTS = Path(__file__).resolve().parent.parent / ".artifacts" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FINISHED = ("completed", "failed", "cancelled")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: make setup installs it"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def distinct_pixel_bytes(png: bytes) -> int:
    """How many different byte values the image's pixel data holds (a blank page: ~1)."""
    pos, data = 8, b""
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        if kind == b"IDAT":
            data += png[pos + 8:pos + 8 + length]
        pos += 12 + length
    return len(set(zlib.decompress(data)))


def shot(page: Page, name: str) -> bytes:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    png = page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
    assert distinct_pixel_bytes(png) > 20, f"{name}: the screenshot is blank"
    return png


def test_the_page_and_its_files_are_served_without_a_cdn(stack: Stack) -> None:
    page = httpx.get(f"{stack.api_url}/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert not re.search(r"(src|href)=\"https?://", page.text), "no file from another origin"
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        asset = httpx.get(f"{stack.api_url}/dashboard/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
    assert httpx.get(f"{stack.api_url}/dashboard/..%2Fapp.py").status_code == 404
    assert httpx.get(f"{stack.api_url}/dashboard/secrets.json").status_code == 404
    # The local sign-in answers this machine only (a rebound DNS name or another site: no).
    for headers in ({"Host": "evil.example"}, {"Origin": "http://evil.example"}):
        assert httpx.post(f"{stack.api_url}/_stack/sign-in", json={"email": "x@example.test"},
                          headers=headers).status_code == 403


def test_sign_in_see_jobs_open_a_failed_one_and_retry_it(stack: Stack, browser: Browser) -> None:
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    email = f"dash-{uuid.uuid4().hex[:8]}@example.test"
    page.goto(f"{stack.api_url}/dashboard")
    page.get_by_test_id("local-email").fill(email)
    page.get_by_test_id("local-sign-in").click()
    expect(page.get_by_test_id("who")).to_have_text(email)

    ((user_id,),) = stack.sql("select id::text from auth.users where email = %s", (email,))
    token = stack.token(user_id)
    flaky = failing_transformer(stack, retryable=False, message="the mail server is down")
    good_wf = create_workflow(stack, chain(2))
    flaky_wf = create_workflow(stack, {"steps": [
        {"id": "prepare", "transformer": "transform"},
        {"id": "send", "transformer": flaky, "depends_on": ["prepare"]}]})
    jobs = {}
    for name, wid in (("good", good_wf), ("flaky", flaky_wf)):
        started = httpx.post(f"{stack.api_url}/workflows/start", headers={
            "Authorization": f"Bearer {token}"}, json={"workflow_id": wid, "input_data": {"n": 1}})
        assert started.status_code == 202, started.text
        jobs[name] = started.json()["job_id"]
    assert wait_status(stack, jobs["good"], "completed", 30) == "completed"
    assert wait_status(stack, jobs["flaky"], "failed", 30) == "failed"

    page.reload()
    counts = page.get_by_test_id("counts")
    expect(counts.locator("li[data-status=completed]")).to_have_text("completed: 1")
    expect(counts.locator("li[data-status=failed]")).to_have_text("failed: 1")
    expect(page.get_by_test_id("failure-rate")).to_have_text("50%")
    expect(page.get_by_test_id("throughput").locator("rect.finished")).not_to_have_count(0)
    table = page.get_by_test_id("jobs-table")
    expect(table.locator("tr[data-status=completed]")).to_contain_text(jobs["good"])
    expect(table.locator("tr[data-status=failed]")).to_contain_text(jobs["flaky"])
    shot(page, "jobs")

    page.get_by_role("link", name=jobs["flaky"]).click()
    expect(page.get_by_test_id("job-id")).to_have_text(jobs["flaky"])
    expect(page.get_by_test_id("job-status")).to_have_text("failed")
    dag = page.get_by_test_id("dag")
    expect(dag.locator("g[data-step=prepare]")).to_have_attribute("data-status", "completed")
    expect(dag.locator("g[data-step=send]")).to_have_attribute("data-status", "failed")
    expect(page.get_by_test_id("events")).to_contain_text("the mail server is down")
    shot(page, "failed-job")
    assert jobs["flaky"] in page.inner_text("body")

    # The mail server is back: retry, and the page follows the job to completion.
    stack.sql("update workflow.transformers set config = '{}' where id = %s", (flaky,))
    page.get_by_test_id("retry").click()
    expect(page.get_by_test_id("job-status")).to_have_text("completed", timeout=30_000)
    expect(dag.locator("g[data-step=send]")).to_have_attribute("data-status", "completed")
    shot(page, "retried-job")
    page.close()


def test_an_operator_sees_an_alert_fire(stack: Stack, browser: Browser) -> None:
    (saved,) = stack.sql("select min_volume from workflow.alert_rules where id = 'high-failure-rate'")
    stack.sql("update workflow.alert_rules set min_volume = 1 where id = 'high-failure-rate'")
    try:
        user = stack.create_user()
        wid = create_workflow(stack, {"steps": [{"id": "s", "transformer": failing_transformer(
            stack, retryable=False, message="down")}]}, prefix="dash-alert")
        started = httpx.post(f"{stack.api_url}/workflows/start", json={
            "workflow_id": wid, "input_data": {}}, headers={"Authorization": f"Bearer {user.token}"})
        assert wait_status(stack, started.json()["job_id"], "failed", 30) == "failed"
        evaluated = httpx.post(f"{stack.api_url}/internal/orchestrator", json={"reason": "manual"},
                               headers={"Authorization": f"Bearer {stack.sec.internal_token}"},
                               timeout=120)
        assert evaluated.status_code == 200, evaluated.text

        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(f"{stack.api_url}/dashboard")
        page.get_by_test_id("local-email").fill(f"ops-{uuid.uuid4().hex[:6]}@example.test")
        page.get_by_label("admin").check()
        page.get_by_test_id("local-sign-in").click()
        alerts = page.get_by_test_id("alerts")
        expect(alerts).to_be_visible()
        expect(alerts.locator("li[data-rule=high-failure-rate]", has_text=wid)).to_have_count(1)
        queue = page.get_by_test_id("queue")  # sampled by the roll-up the evaluation ran
        expect(queue).to_be_visible()
        expect(queue.locator("rect.depth")).not_to_have_count(0)
        shot(page, "alerts")
        page.close()
    finally:
        stack.sql("update workflow.alert_rules set min_volume = %s where id = 'high-failure-rate'",
                  (saved[0],))


def test_stats_show_each_caller_only_what_they_may_see(stack: Stack) -> None:
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    worker, stranger = stack.create_user(), stack.create_user()
    worker_token = stack.token(worker.id, app_metadata={"tenant_id": tenant})
    admin = stack.create_user()
    admin_token = stack.token(admin.id, app_metadata={"tenant_id": tenant,
                                                      "supaflow_role": "admin"})
    wid = create_workflow(stack, chain(1))
    started = httpx.post(f"{stack.api_url}/workflows/start", json={
        "workflow_id": wid, "input_data": {"n": 1}}, headers={"Authorization": f"Bearer {worker_token}"})
    assert wait_status(stack, started.json()["job_id"], "completed", 30) == "completed"

    def stats(token: str) -> dict[str, object]:
        response = httpx.get(f"{stack.api_url}/stats", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
        answer: dict[str, object] = response.json()
        return answer

    assert stats(worker_token)["counts"] == {"completed": 1}
    assert stats(worker_token)["scope"] == "own"
    assert stats(stranger.token)["counts"] == {}
    assert stats(admin_token) == {**stats(admin_token), "scope": "tenant",
                                  "counts": {"completed": 1}}
    everyone = stats(stack.sec.service_role_key)
    assert everyone["scope"] == "all" and isinstance(everyone["queue"], list)
    assert "queue" not in stats(worker_token), "the queue is everyone's: operators only"
    assert httpx.get(f"{stack.api_url}/stats").status_code == 401


def test_an_operators_counts_are_the_jobs_statuses_now(stack: Stack) -> None:
    """Finished counts come from the totals (finished less retried): a job that failed
    and was retried to completion counts once, as completed."""
    def readings() -> tuple[dict[str, int], dict[str, int]]:
        """The operator's finished counts and the jobs' statuses, read while no other job
        finished (jobs of earlier tests may still be finishing)."""
        for _ in range(20):
            live = finished_now()
            counts = httpx.get(f"{stack.api_url}/stats", headers={
                "Authorization": f"Bearer {stack.sec.service_role_key}"}).json()["counts"]
            if live == finished_now():
                break
        return {s: counts.get(s, 0) for s in FINISHED}, live

    def finished_now() -> dict[str, int]:
        found = dict(stack.sql("select status, count(*)::int from workflow.jobs"
                               " where status = any(%s) group by status", (list(FINISHED),)))
        return {s: found.get(s, 0) for s in FINISHED}

    shown_before, live_before = readings()
    user = stack.create_user()
    flaky = failing_transformer(stack, retryable=False)
    wid = create_workflow(stack, {"steps": [{"id": "s", "transformer": flaky}]})
    started = httpx.post(f"{stack.api_url}/workflows/start", json={
        "workflow_id": wid, "input_data": {}}, headers={"Authorization": f"Bearer {user.token}"})
    job_id = started.json()["job_id"]
    assert wait_status(stack, job_id, "failed", 30) == "failed"
    stack.sql("update workflow.transformers set config = '{}' where id = %s", (flaky,))
    retried = httpx.post(f"{stack.api_url}/jobs/{job_id}/retry",
                         headers={"Authorization": f"Bearer {user.token}"})
    assert retried.status_code == 202, retried.text
    assert wait_status(stack, job_id, "completed", 30) == "completed"
    shown_after, live_after = readings()
    assert {s: shown_after[s] - shown_before[s] for s in FINISHED} \
        == {s: live_after[s] - live_before[s] for s in FINISHED}
    assert live_after["completed"] > live_before["completed"]


def test_a_users_chart_holds_a_job_that_ran_for_hours(stack: Stack) -> None:
    user = stack.create_user()
    wid = create_workflow(stack, chain(1))
    started = httpx.post(f"{stack.api_url}/workflows/start", json={
        "workflow_id": wid, "input_data": {"n": 1}}, headers={"Authorization": f"Bearer {user.token}"})
    job_id = started.json()["job_id"]
    assert wait_status(stack, job_id, "completed", 30) == "completed"
    # Started three hours ago (a delay, a long step), finished just now.
    stack.sql("update workflow.jobs set created_at = now() - interval '3 hours' where id = %s",
              (job_id,))
    stats = httpx.get(f"{stack.api_url}/stats",
                      headers={"Authorization": f"Bearer {user.token}"}).json()
    assert sum(m["finished"] for m in stats["minutes"]) == 1, stats
