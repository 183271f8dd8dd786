"""The `supaflow` command, driven as a subprocess against the running stack: deploy a folder
(diff, dry run, publish), run and watch a job, jobs and workflows commands, files with
mistakes refused with file, line and field, and the live view on a real terminal (tmux)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from supaflow_client.cli import target
from supaflow_client.files import Problems, load_all
from testkit.receiver import Receiver, webhook_receiver
from testkit.stack import Stack
from testkit.workflows import WEBHOOK_SECRET_ENV

SUPAFLOW = str(Path(sys.executable).parent / "supaflow")


def cli(stack: Stack, *args: str, token: str | None = None, cwd: Path | None = None,
        timeout: float = 120, env_extra: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPAFLOW_", "SUPABASE_"))}
    env.update({"SUPAFLOW_URL": stack.api_url, "SUPABASE_SERVICE_ROLE_KEY": stack.sec.service_role_key,
                "SUPABASE_JWT_SECRET": stack.sec.jwt_secret, "COLUMNS": "200", **(env_extra or {})})
    if token is not None:
        env["SUPAFLOW_TOKEN"] = token
    return subprocess.run([SUPAFLOW, *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False)


def as_json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.stdout, done.stderr
    return json.loads(done.stdout)


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def project(folder: Path, wid: str, tid: str, *, steps: int = 2, fail: bool = False) -> Path:
    """A folder with one transformer and one workflow, as a user would keep them."""
    config = '{fail: {retryable: false, message: "broken on purpose"}}' if fail else "{}"
    write(folder, "echo.yaml", f"kind: transformer\nid: {tid}\ntype: transform\n"
                               f"description: echoes\nconfig: {config}\n")
    step_lines = "".join(
        f"    - id: s{i}\n      transformer: {tid if i == steps else 'transform'}\n"
        f"      inputs: {{n: $.input.n}}\n" for i in range(1, steps + 1))
    write(folder, "workflow.yaml", f"kind: workflow\nid: {wid}\ndescription: counts\n"
                                   f"definition:\n  steps:\n{step_lines}")
    return folder


def held_project(stack: Stack, folder: Path, receiver: Receiver, prefix: str,
                 before: str = "", after: str = "") -> str:
    """A deployed workflow whose step `call` waits 3 s on a slow webhook (between the
    steps `before` and `after` when given); returns its id."""
    hook, wid = fresh("cli-hook"), fresh(prefix)
    write(folder, "echo.yaml", f"kind: transformer\nid: {hook}\ntype: webhook_call\n"
                               f"config: {{url: '{receiver.url('/slow/3000')}',"
                               f" secret_env_var: {WEBHOOK_SECRET_ENV}}}\n")
    steps = [*([before] if before else []), f"{{id: call, transformer: {hook}}}",
             *([after] if after else [])]
    write(folder, "workflow.yaml", f"kind: workflow\nid: {wid}\ndefinition:\n  steps:\n"
                                   + "".join(f"    - {step}\n" for step in steps))
    assert cli(stack, "deploy", str(folder), "--yes").returncode == 0
    return wid


def fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def test_deploy_shows_the_diff_then_publishes(stack: Stack, tmp_path: Path) -> None:
    wid, tid = fresh("cli-wf"), fresh("cli-t")
    folder = project(tmp_path, wid, tid)

    dry = cli(stack, "deploy", str(folder), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"+ create transformer {tid}" in dry.stdout and f"+ create workflow {wid}" in dry.stdout
    assert stack.sql("select count(*) from workflow.workflow_drafts where workflow_id = %s",
                     (wid,))[0][0] == 0, "a dry run writes nothing"
    refused = cli(stack, "deploy", str(folder))  # no terminal, no --yes
    assert refused.returncode != 0 and "--yes" in refused.stderr

    done = as_json(cli(stack, "deploy", str(folder), "--yes", "--json"))
    assert [(d["kind"], d["id"], d["action"]) for d in done["published"]] == [
        ("transformer", tid, "create"), ("workflow", wid, "create")]
    assert done["published"][1]["version"] == 1
    again = as_json(cli(stack, "deploy", str(folder), "--yes", "--json"))
    assert {p["action"] for p in again["plan"]} == {"unchanged"}

    project(tmp_path, wid, tid, steps=3)  # one more step
    diff = cli(stack, "deploy", str(folder), "--dry-run")
    assert f"~ update workflow {wid}" in diff.stdout and f"= unchanged transformer {tid}" in diff.stdout
    assert '+        "id": "s3"' in diff.stdout.replace("    +", "+"), diff.stdout
    published = as_json(cli(stack, "deploy", str(folder), "--yes", "--json"))["published"]
    assert [p.get("version") for p in published if p["kind"] == "workflow"] == [2]

    shown = as_json(cli(stack, "workflows", "show", wid, "--json"))
    assert [v["version"] for v in shown["versions"]] == [2, 1]
    listed = as_json(cli(stack, "workflows", "ls", "--json"))["workflows"]
    assert wid in [w["workflow_id"] for w in listed]


@pytest.mark.parametrize(("name", "text", "expected"), [
    ("cycle.yaml", "kind: workflow\nid: c\ndefinition:\n  steps:\n"
     "    - id: a\n      transformer: transform\n      depends_on: [b]\n"
     "    - id: b\n      transformer: transform\n      depends_on: [a]\n",
     "cycle.yaml:4: definition.steps: dependency cycle"),
    ("unknown.yaml", "kind: workflow\nid: u\ndefinition:\n  steps:\n"
     "    - id: a\n      transformer: transform\n"
     "      colour: blue\n",
     "unknown.yaml:7: definition.steps.0.colour: Extra inputs are not permitted"),
    ("top.yaml", "kind: workflow\nid: t\nowner: me\ndefinition: {steps: [{id: a, transformer: x}]}\n",
     "top.yaml:3: owner: Extra inputs are not permitted"),
    ("config.json", '{"kind": "transformer", "id": "j", "type": "http_download",\n'
     ' "config": {"bucket": "b",\n  "key_template": "{password}"}}\n',
     "config.json:3: config.key_template:"),
    ("secret.yaml", "kind: transformer\nid: s\ntype: webhook_call\nconfig:\n  url: https://x.test/\n"
     "  secret_env_var: SUPABASE_JWT_SECRET\n",
     "secret.yaml:6: config.secret_env_var: may name only"),
])
def test_a_file_with_a_mistake_names_file_line_and_field_and_changes_nothing(
        stack: Stack, tmp_path: Path, name: str, text: str, expected: str) -> None:
    wid, tid = fresh("cli-wf"), fresh("cli-t")
    project(tmp_path, wid, tid)
    write(tmp_path, name, text)
    before = stack.sql("select (select count(*) from workflow.workflow_drafts),"
                       " (select count(*) from workflow.transformers)")
    done = cli(stack, "deploy", str(tmp_path), "--yes")
    assert done.returncode == 1
    assert f"{tmp_path}/{expected}" in done.stderr, done.stderr
    assert stack.sql("select (select count(*) from workflow.workflow_drafts),"
                     " (select count(*) from workflow.transformers)") == before
    assert stack.sql("select count(*) from workflow.workflows where id = %s", (wid,))[0][0] == 0


def test_a_workflow_using_an_unknown_transformer_is_refused_before_sending(
        stack: Stack, tmp_path: Path) -> None:
    write(tmp_path, "w.yaml", "kind: workflow\nid: x-unknown\ndefinition:\n  steps:\n"
                              "    - {id: a, transformer: transform}\n"
                              "    - {id: b, transformer: nowhere-to-be-found}\n")
    done = cli(stack, "deploy", str(tmp_path), "--yes")
    assert done.returncode == 1
    assert f"{tmp_path}/w.yaml:6: definition.steps.1.transformer: step 'b' uses" in done.stderr


def test_files_hold_json_values_only_and_each_key_once(tmp_path: Path) -> None:
    """YAML 1.1 would read `2024-01-01` as a date (which cannot be sent) and `yes` as true;
    a key given twice would silently lose the first. JSON with tabs is still JSON."""
    write(tmp_path, "w.yaml", "kind: workflow\nid: v\ndefinition:\n  steps:\n"
                              "    - id: a\n      transformer: transform\n"
                              "      inputs: {day: 2024-01-01, answer: yes, real: true}\n")
    (item,) = load_all([tmp_path / "w.yaml"])
    assert item.body["definition"]["steps"][0]["inputs"] == {
        "day": "2024-01-01", "answer": "yes", "real": True}
    write(tmp_path, "twice.yaml", "kind: workflow\nid: t\ndefinition:\n  steps: []\n"
                                  "  steps:\n    - {id: a, transformer: transform}\n")
    with pytest.raises(Problems) as info:
        load_all([tmp_path / "twice.yaml"])
    assert info.value.lines == [f"{tmp_path}/twice.yaml:5: definition.steps: is given twice"]
    write(tmp_path, "tabs.json", '{\n\t"kind": "transformer",\n\t"id": "tabbed",'
                                 '\n\t"type": "transform"\n}\n')
    (tabbed,) = load_all([tmp_path / "tabs.json"])
    assert tabbed.body["type"] == "transform"


def test_deploy_makes_what_starts_jobs_from_files_and_the_commands_list_and_remove_it(
        stack: Stack, tmp_path: Path) -> None:
    """A schedule (in a time zone), a trigger and a Stripe webhook whose secret comes from
    the environment, deployed with the workflow they start; each then starts it."""
    wid, tid = fresh("cli-wf"), fresh("cli-t")
    project(tmp_path, wid, tid, steps=1)
    table = f"cli_rows_{uuid.uuid4().hex[:8]}"
    stack.sql(f"create table public.{table} (id serial primary key, n int)")
    ids = {kind: fresh(f"cli-{kind}") for kind in ("schedule", "trigger", "webhook")}
    write(tmp_path, "nightly.yaml", f"kind: schedule\nid: {ids['schedule']}\nworkflow_id: {wid}\n"
                                    "cron: '30 2 * * *'\ntimezone: Asia/Kolkata\ninput: {n: 1}\n")
    write(tmp_path, "rows.yaml", f"kind: trigger\nid: {ids['trigger']}\nworkflow_id: {wid}\n"
                                 f"table: public.{table}\nevents: [insert]\n"
                                 "input_mapping: {n: new.n}\n")
    write(tmp_path, "stripe.yaml", f"kind: webhook\nid: {ids['webhook']}\nworkflow_id: {wid}\n"
                                   "signature: stripe\nsecret_env: CLI_STRIPE_SECRET\n"
                                   "input_mapping: {n: $.input.body.n}\n")
    missing = cli(stack, "deploy", str(tmp_path), "--yes")
    assert missing.returncode == 1 and \
        f"{tmp_path}/stripe.yaml:5: secret_env: the environment variable CLI_STRIPE_SECRET" \
        in missing.stderr, missing.stderr
    secret = "whsec_" + uuid.uuid4().hex
    env = {"CLI_STRIPE_SECRET": secret}
    done = as_json(cli(stack, "deploy", str(tmp_path), "--yes", "--json", env_extra=env))
    assert [(d["kind"], d["action"]) for d in done["published"]] == [
        ("transformer", "create"), ("workflow", "create"), ("schedule", "create"),
        ("trigger", "create"), ("webhook", "create")]
    assert done["published"][-1]["secret"] == secret
    again = as_json(cli(stack, "deploy", str(tmp_path), "--yes", "--json", env_extra=env))
    assert {p["action"] for p in again["plan"]} == {"unchanged"}, again["plan"]

    # Each starts the workflow.
    (job,) = stack.sql("select workflow.run_schedule(%s)", (ids["schedule"],))[0]
    stack.sql(f"insert into public.{table} (n) values (5)")
    body = json.dumps({"id": "evt_" + uuid.uuid4().hex, "n": 6}).encode()
    at = int(time.time())
    digest = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    delivered = httpx.post(f"{stack.api_url}/webhooks/{ids['webhook']}", content=body, headers={
        "Content-Type": "application/json", "Stripe-Signature": f"t={at},v1={digest}"})
    assert delivered.status_code == 202, delivered.text
    started = stack.sql("select origin, (input_data ->> 'n')::int from workflow.jobs"
                        " where workflow_id = %s order by created_at", (wid,))
    assert started == [("schedule", 1), ("trigger", 5), ("webhook", 6)], (job, started)

    write(tmp_path, "nightly.yaml", f"kind: schedule\nid: {ids['schedule']}\nworkflow_id: {wid}\n"
                                    "cron: '45 2 * * *'\ntimezone: Asia/Kolkata\ninput: {n: 1}\n")
    diff = cli(stack, "deploy", str(tmp_path), "--dry-run", env_extra=env)
    assert f"~ update schedule {ids['schedule']}" in diff.stdout, diff.stdout
    assert '+  "cron": "45 2 * * *"' in diff.stdout.replace("    +", "+"), diff.stdout

    for kind in ("schedule", "trigger", "webhook"):
        listed = as_json(cli(stack, f"{kind}s", "ls", "--json"))[f"{kind}s"]
        assert ids[kind] in [row[f"{kind}_id"] for row in listed], kind
        assert ids[kind] in cli(stack, f"{kind}s", "ls").stdout
        assert cli(stack, f"{kind}s", "rm", ids[kind]).returncode == 0
        gone = cli(stack, f"{kind}s", "rm", ids[kind])
        assert gone.returncode == 1 and "404" in gone.stderr
    assert stack.sql("select count(*) from cron.job where jobname = %s",
                     (f"supaflow-schedule:{ids['schedule']}",)) == [(0,)]
    stack.sql(f"insert into public.{table} (n) values (9)")
    assert len(stack.sql("select 1 from workflow.jobs where workflow_id = %s", (wid,))) == 3
    assert as_json(cli(stack, "alerts", "ls", "--json")).keys() == {"alerts"}


def test_a_webhook_file_never_holds_its_secret(tmp_path: Path) -> None:
    write(tmp_path, "hook.yaml", "kind: webhook\nid: h\nworkflow_id: w\n"
                                 "secret: whsec_0123456789abcdef0123\nrotate_secret: true\n")
    with pytest.raises(Problems) as info:
        load_all([tmp_path / "hook.yaml"])
    assert [line.split(": ")[0:2] for line in info.value.lines] == [
        [f"{tmp_path}/hook.yaml:4", "secret"], [f"{tmp_path}/hook.yaml:5", "rotate_secret"]]


def test_run_waits_and_jobs_commands_cancel_and_retry(stack: Stack, tmp_path: Path) -> None:
    wid, tid = fresh("cli-wf"), fresh("cli-t")
    assert cli(stack, "deploy", str(project(tmp_path, wid, tid)), "--yes").returncode == 0
    token = cli(stack, "token", "--user", f"{fresh('u')}@example.test").stdout.strip()

    ran = cli(stack, "run", wid, "--input", '{"n": 7}', "--wait", token=token)
    assert ran.returncode == 0, ran.stderr
    assert "completed" in ran.stdout and '"n": 7' in ran.stdout
    assert "s1" in ran.stdout and "s2" in ran.stdout  # the final view's steps
    job = as_json(cli(stack, "run", wid, "-i", '{"n": 8}', "--wait", "--json", token=token))
    assert job["status"] == "completed" and job["final_result"] == {"n": 8}
    inputs = tmp_path.parent / f"{tmp_path.name}-in.json"  # not in the deployed folder
    inputs.write_text('{"n": 9}')
    started = as_json(cli(stack, "run", wid, "--input", f"@{inputs}", "--json", token=token))
    listed = as_json(cli(stack, "jobs", "ls", "--workflow", wid, "--json", token=token))["jobs"]
    assert started["job_id"] in [j["job_id"] for j in listed] and len(listed) == 3

    # A failing job: non-zero, the error printed; fixed and retried, it completes.
    project(tmp_path, wid, tid, fail=True)
    assert cli(stack, "deploy", str(tmp_path), "--yes").returncode == 0
    failed = cli(stack, "run", wid, "--input", '{"n": 1}', "--wait", token=token)
    assert failed.returncode == 1 and "broken on purpose" in failed.stdout
    job_id = as_json(cli(stack, "jobs", "ls", "--workflow", wid, "--status", "failed", "--json",
                         token=token))["jobs"][0]["job_id"]
    project(tmp_path, wid, tid)
    assert cli(stack, "deploy", str(tmp_path), "--yes").returncode == 0
    retried = cli(stack, "jobs", "retry", job_id, token=token)
    assert retried.returncode == 0 and "rerunning s2" in retried.stdout, retried.stdout
    deadline = time.monotonic() + 30
    while (shown := as_json(cli(stack, "jobs", "show", job_id, "--json", token=token)))[
            "status"] != "completed":
        assert time.monotonic() < deadline, shown
        time.sleep(0.3)
    events = as_json(cli(stack, "jobs", "events", job_id, "--json", token=token))
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert any(e["detail"].get("retried_by") for e in events)
    assert cli(stack, "jobs", "retry", job_id, token=token).returncode == 1  # 409: completed

    # Cancel: a job held by a slow webhook.
    with webhook_receiver() as receiver:
        slow = held_project(stack, tmp_path, receiver, "cli-slow")
        started = as_json(cli(stack, "run", slow, "--json", token=token))
        cancelled = cli(stack, "jobs", "cancel", started["job_id"], token=token)
        assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout


def test_health_and_errors(stack: Stack) -> None:
    health = as_json(cli(stack, "health", "--json"))
    assert health["status"] == "ok"
    missing = cli(stack, "jobs", "show", str(uuid.uuid4()))
    assert missing.returncode == 1 and "404 not_found" in missing.stderr


def test_token_is_for_the_local_stack_only(stack: Stack) -> None:
    refused = cli(stack, "token", "--user", "a@example.test", "--url", "https://abcd.supabase.co")
    assert refused.returncode == 2 and "not the local stack" in refused.stderr
    assert refused.stdout == ""
    minted = as_json(cli(stack, "token", "--user", "b@example.test", "--json"))
    assert minted["email"] == "b@example.test"
    assert stack.sql("select email from auth.users where id = %s", (minted["user_id"],)) == [
        ("b@example.test",)]


def test_the_local_keys_never_go_to_another_host(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    """The service-role key and JWT secret of .env (or the environment) are the local
    stack's: against another URL there is no default token."""
    monkeypatch.chdir(tmp_path)
    write(tmp_path, ".env", "API_URL=http://127.0.0.1:54321\nSUPABASE_SERVICE_ROLE_KEY=local-key\n"
                            "SUPABASE_JWT_SECRET=local-secret\n")
    for name in ("SUPAFLOW_URL", "SUPAFLOW_TOKEN", "API_URL", "SUPABASE_SERVICE_ROLE_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert target(None, None).token == "local-key"
    remote = target("https://abcd.supabase.co", None)
    assert (remote.token, remote.service_key, remote.jwt_secret) == (None, None, None)
    assert target("https://abcd.supabase.co", "given").token == "given"


def test_a_deactivated_workflow_is_published_again(stack: Stack, tmp_path: Path) -> None:
    wid, tid = fresh("cli-wf"), fresh("cli-t")
    assert cli(stack, "deploy", str(project(tmp_path, wid, tid)), "--yes").returncode == 0
    stack.sql("update workflow.workflows set is_active = false where id = %s", (wid,))
    plan = as_json(cli(stack, "deploy", str(tmp_path), "--yes", "--json"))
    assert [(p["id"], p["action"]) for p in plan["plan"] if p["kind"] == "workflow"] == [
        (wid, "update")]
    assert stack.sql("select is_active, version from workflow.workflows where id = %s",
                     (wid,)) == [(True, 1)]


def test_run_wait_exits_non_zero_when_the_job_is_cancelled(stack: Stack, tmp_path: Path) -> None:
    with webhook_receiver() as receiver:
        wid = held_project(stack, tmp_path, receiver, "cli-cancel")
        token = cli(stack, "token", "--user", f"{fresh('u')}@example.test").stdout.strip()
        env = {**os.environ, "SUPAFLOW_URL": stack.api_url, "SUPAFLOW_TOKEN": token}
        waiting = subprocess.Popen([SUPAFLOW, "run", wid, "--wait", "--json"], env=env,
                                   stdout=subprocess.PIPE, text=True)
        receiver.wait_for(lambda: len(receiver.deliveries) > 0, 30, "the held step")
        job_id = stack.sql("select id::text from workflow.jobs where workflow_id = %s", (wid,))[0][0]
        assert cli(stack, "jobs", "cancel", job_id, token=token).returncode == 0
        out, _ = waiting.communicate(timeout=60)
    assert waiting.returncode == 1 and json.loads(out)["status"] == "cancelled"


def test_the_live_view_updates_on_a_terminal(stack: Stack, tmp_path: Path) -> None:
    """`supaflow run --wait` on a real terminal (tmux): the step table is seen while the
    job runs (its webhook step held for 3 s) and then the final state. tmux comes with
    make setup; without it this test fails, it does not skip."""
    assert shutil.which("tmux"), "tmux is missing: make setup installs it"
    with webhook_receiver() as receiver:
        wid = held_project(stack, tmp_path, receiver, "cli-live",
                           before="{id: first, transformer: transform}",
                           after="{id: last, transformer: transform}")
        session = fresh("supaflow")
        env = (f"SUPAFLOW_URL={stack.api_url} SUPABASE_SERVICE_ROLE_KEY={stack.sec.service_role_key}"
               f" SUPABASE_JWT_SECRET={stack.sec.jwt_secret}")
        command = f"{env} {SUPAFLOW} run {wid} --wait; echo EXIT=$?; sleep 30"
        subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "40",
                        command], check=True)
        try:
            screens: list[str] = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session],
                                        capture_output=True, text=True, check=True).stdout
                screens.append(screen)
                if "EXIT=" in screen:
                    break
                time.sleep(0.2)
        finally:
            subprocess.run(["tmux", "kill-session", "-t", session], check=False)
    live = [s for s in screens if "EXIT=" not in s and "call" in s and "running" in s]
    assert live, "the live view never showed the held step running:\n" + "\n---\n".join(screens[-3:])
    assert any("first" in s and "completed" in s for s in live), live[-1]
    final = screens[-1]
    assert "EXIT=0" in final and "final_result" in final, final
    assert final.count("completed") >= 4, final  # the job and its three steps
