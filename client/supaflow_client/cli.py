"""The `supaflow` command: deploy workflows, transformers, schedules, triggers and webhooks
from files, run a job and watch it live, read or control jobs, list what starts them and
the alerts firing, over the HTTP API only.

Configuration, first found wins: flags (`--url`, `--token`), the environment
(`SUPAFLOW_URL`, `SUPAFLOW_TOKEN`), then a `.env` file in the current folder as
`make env` prints it (`API_URL`, `SUPABASE_SERVICE_ROLE_KEY`, `SUPABASE_JWT_SECRET`).
Every command takes `--json` for scripts.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, cast
from urllib.parse import urlsplit

import httpx
import jwt
import typer
from dotenv import dotenv_values
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from supaflow_client.client import Client, JobStatus, SupaflowError
from supaflow_client.deploy import Change, Failed, apply_changes, plan_changes
from supaflow_client.files import Problems, load_all

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Deploy workflows, run jobs and watch them, over supaflow's HTTP API.")
jobs_app = typer.Typer(no_args_is_help=True, help="List, show, cancel and retry jobs.")
workflows_app = typer.Typer(no_args_is_help=True, help="List and show workflows.")
schedules_app = typer.Typer(no_args_is_help=True,
                            help="List and remove schedules (deploy makes them from files).")
triggers_app = typer.Typer(no_args_is_help=True,
                           help="List and remove database triggers (deploy makes them).")
webhooks_app = typer.Typer(no_args_is_help=True,
                           help="List and remove inbound webhooks (deploy makes them).")
alerts_app = typer.Typer(no_args_is_help=True, help="The alerts firing (operators).")
app.add_typer(jobs_app, name="jobs")
app.add_typer(workflows_app, name="workflows")
app.add_typer(schedules_app, name="schedules")
app.add_typer(triggers_app, name="triggers")
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(alerts_app, name="alerts")

console = Console()
errors = Console(stderr=True)
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_LOCAL_USER = "you@localhost"

UrlOpt = Annotated[str | None, typer.Option("--url", help="API URL (SUPAFLOW_URL, API_URL).")]
TokenOpt = Annotated[str | None, typer.Option(
    "--token", help="A user's JWT or the service-role key (SUPAFLOW_TOKEN).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON, for scripts.")]


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Target:
    url: str
    token: str | None
    service_key: str | None
    jwt_secret: str | None

    @property
    def local(self) -> bool:
        return (urlsplit(self.url).hostname or "") in LOCAL_HOSTS


def target(url: str | None, token: str | None) -> Target:
    dotenv = {k: v for k, v in dotenv_values(Path.cwd() / ".env").items() if v is not None}

    def setting(*names: str) -> str | None:
        for name in names:
            if os.environ.get(name):
                return os.environ[name]
        for name in names:
            if dotenv.get(name):
                return dotenv[name]
        return None

    found_url = url or setting("SUPAFLOW_URL", "API_URL")
    if not found_url:
        raise fail("no API URL: pass --url, or set SUPAFLOW_URL (a .env from `make env` has"
                   " API_URL)")
    service_key = setting("SUPABASE_SERVICE_ROLE_KEY")
    # The local stack's keys (make env) are only ever sent to the local stack.
    local = (urlsplit(found_url).hostname or "") in LOCAL_HOSTS
    default = service_key if local else None
    return Target(found_url.rstrip("/"), token or setting("SUPAFLOW_TOKEN") or default,
                  service_key if local else None, setting("SUPABASE_JWT_SECRET") if local else None)


def fail(message: str, code: int = 2) -> typer.Exit:
    errors.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


CONFIGURED = "configured"


@contextmanager
def client(t: Target, token: str | None = CONFIGURED) -> Iterator[Client]:
    """A client (with the configured token, another, or None for none) whose API errors
    end the command with their code and message."""
    try:
        with Client(t.url, t.token if token == CONFIGURED else token) as c:
            yield c
    except SupaflowError as exc:
        fail(f"{exc.status} {exc.code}: {exc.message}", 1)


def emit(data: Any, as_json: bool, render: Callable[[], None]) -> None:
    if as_json:
        print(json.dumps(data, indent=2, default=str))
    else:
        render()


# --------------------------------------------------------------------------- local users


def local_user_token(t: Target, email: str, valid_s: int = 3600) -> str:
    """A user JWT minted with the local stack's secret, for a user created if new. Refused
    against anything but a local URL: a deployed project's users sign in with Supabase."""
    if not t.local:
        fail(f"{t.url} is not the local stack: tokens are minted only for 127.0.0.1/localhost"
             " (a deployed project's users get theirs from Supabase Auth)")
    if not t.jwt_secret or not t.service_key:
        fail("the local stack's SUPABASE_JWT_SECRET and SUPABASE_SERVICE_ROLE_KEY are needed"
             " (make -s env > .env)")
    try:
        answer = httpx.post(f"{t.url}/_stack/users", json={"email": email}, timeout=30,
                            headers={"Authorization": f"Bearer {t.service_key}"})
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach the local stack at {t.url}: {exc}") from None
    if answer.status_code != 200:
        fail(f"cannot create the local user {email}: {answer.status_code} {answer.text}")
    now = int(time.time())
    claims = {"sub": answer.json()["id"], "email": email, "aud": "authenticated",
              "role": "authenticated", "iat": now, "exp": now + valid_s}
    return jwt.encode(claims, str(t.jwt_secret), algorithm="HS256")


def user_token(t: Target) -> str | None:
    """Starting a job takes a user: the configured token, unless it is the service-role
    key, in which case the local stack's default user (DEFAULT_LOCAL_USER)."""
    if t.token and t.token != t.service_key:
        return t.token
    if t.local:
        return local_user_token(t, DEFAULT_LOCAL_USER)
    fail("starting a job needs a user's token: set SUPAFLOW_TOKEN or pass --token")
    return None


@app.command()
def token(user: Annotated[str, typer.Option("--user", help="The user's email.")],
          url: UrlOpt = None, valid_s: int = 3600, as_json: JsonOpt = False) -> None:
    """Print a user JWT for the local stack only, creating the user if new."""
    minted = local_user_token(target(url, None), user, valid_s)
    claims = jwt.decode(minted, options={"verify_signature": False})
    emit({"token": minted, "user_id": claims["sub"], "email": user, "expires_at": claims["exp"]},
         as_json, lambda: print(minted))


# --------------------------------------------------------------------------- deploy


def refuse(problems: list[str], as_json: bool) -> None:
    """Files that cannot be deployed: each problem, and exit status 1; nothing is sent."""
    emit({"ok": False, "problems": problems}, as_json,
         lambda: errors.print("\n".join(problems), highlight=False, markup=False))
    raise typer.Exit(1)


def _show_plan(plan: list[Change]) -> None:
    marks = {"create": "[green]+ create[/green]", "update": "[yellow]~ update[/yellow]",
             "unchanged": "[dim]= unchanged[/dim]"}
    for change in plan:
        console.print(f"{marks[change.action]} {change.item.kind} {change.item.id}"
                      f" [dim]({change.item.path})[/dim]", highlight=False)
        for line in change.diff[2:]:
            style = "green" if line.startswith("+") else "red" if line.startswith("-") else "dim"
            console.print(Text(f"    {line}", style=style))


@app.command()
def deploy(
    paths: Annotated[list[Path], typer.Argument(help="Files, or folders of .yaml/.yml/.json files.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the diff only.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Publish without asking.")] = False,
    url: UrlOpt = None, token_: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Check workflows, transformers, schedules, triggers and webhooks locally, show what
    would change, then publish (a new webhook's secret is printed once)."""
    t = target(url, token_)
    try:
        items = load_all(paths)
    except Problems as exc:
        refuse(exc.lines, as_json)
    with client(t) as c:
        try:
            plan = plan_changes(c, items)
        except Problems as exc:
            refuse(exc.lines, as_json)
            return
        summary = [{"kind": ch.item.kind, "id": ch.item.id, "action": ch.action, "diff": ch.diff}
                   for ch in plan]
        if not as_json:
            _show_plan(plan)
        changes = [ch for ch in plan if ch.action != "unchanged"]
        if dry_run or not changes:
            emit({"ok": True, "dry_run": dry_run, "plan": summary}, as_json,
                 lambda: console.print("nothing to publish" if not changes else "dry run: nothing"
                                       " published"))
            return
        if not yes:
            if not sys.stdin.isatty():
                fail("not a terminal: pass --yes to publish without asking")
            typer.confirm(f"publish {len(changes)} change(s)?", abort=True)
        try:
            done = apply_changes(c, plan)
        except Failed as exc:
            stopped = f"{exc.error.status} {exc.error.code}: {exc.error.message}"
            emit({"ok": False, "plan": summary, "published": exc.done,
                  "failed": {"kind": exc.item.kind, "id": exc.item.id, "error": stopped}},
                 as_json, lambda: None)
            for d in exc.done:
                if d["action"] != "unchanged":
                    errors.print(f"published {d['kind']} {d['id']}", highlight=False)
            raise fail(f"{exc.item.kind} {exc.item.id} ({exc.item.path}): {stopped};"
                       " nothing after it was published", 1) from None
    def render() -> None:
        for d in done:
            if d["action"] != "unchanged":
                version = f" version {d['version']}" if "version" in d else ""
                console.print(f"[green]published[/green] {d['kind']} {d['id']}{version}",
                              highlight=False)
            if d.get("secret"):
                console.print(f"  deliveries to POST {d['path']} are signed with {d['secret']}"
                              " (shown once: keep it)", highlight=False, markup=False)
    emit({"ok": True, "dry_run": False, "plan": summary, "published": done}, as_json, render)


# --------------------------------------------------------------------------- run and watch


def _duration(step: dict[str, Any]) -> str:
    start, end = step.get("started_at"), step.get("completed_at")
    if not start:
        return ""
    began = datetime.fromisoformat(start)
    ended = datetime.fromisoformat(end) if end else datetime.now(UTC)
    return f"{(ended - began).total_seconds():.2f}s"


STATUS_STYLE = {"completed": "green", "failed": "red", "cancelled": "yellow",
                "running": "cyan", "ready": "blue", "awaiting_retry": "magenta"}


def job_view(job: dict[str, Any]) -> Group:
    """The live view: the job's status and a table of its steps."""
    table = Table("step", "status", "attempt", "duration", title=None, expand=False)
    for step in job.get("steps", []):
        style = STATUS_STYLE.get(step["status"], "")
        table.add_row(step["step_id"], Text(step["status"], style=style),
                      f"{step['attempt']}/{step['max_attempts']}", _duration(step))
    head = Text.assemble("job ", (str(job["job_id"]), "bold"), "  ",
                         (job["status"], STATUS_STYLE.get(job["status"], "")),
                         f"  {job['workflow_id']} v{job['workflow_version']}")
    return Group(head, table)


def _parse_input(raw: str) -> dict[str, Any]:
    try:
        text = Path(raw[1:]).read_text(encoding="utf-8") if raw.startswith("@") else raw
        value = json.loads(text)
    except (OSError, ValueError) as exc:
        raise fail(f"--input: {exc}") from None
    if not isinstance(value, dict):
        raise fail("--input: must be a JSON object")
    return cast(dict[str, Any], value)


def _finish(job: dict[str, Any], as_json: bool) -> None:
    def render() -> None:
        console.print(job_view(job))
        if job["status"] != "completed":
            console.print(f"[red]{job['status']}:[/red] {job.get('error_message') or ''}",
                          highlight=False)
        console.print("final_result:", json.dumps(job["final_result"], indent=2), highlight=False)
    emit(job, as_json, render)
    if job["status"] != "completed":
        raise typer.Exit(1)


@app.command()
def run(
    workflow: Annotated[str, typer.Argument(help="The workflow id.")],
    input_: Annotated[str, typer.Option("--input", "-i", help="JSON, or @file.json.")] = "{}",
    wait: Annotated[bool, typer.Option("--wait", "-w", help="Watch the job to its end.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait at most.")] = 600,
    key: Annotated[str | None, typer.Option(help="Idempotency key (default: a new one).")] = None,
    url: UrlOpt = None, token_: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Start a job; with --wait, show its steps live and exit 0 only if it completes."""
    t = target(url, token_)
    data = _parse_input(input_)
    with client(t, user_token(t)) as c:
        started = c.start(workflow, data, idempotency_key=key or uuid.uuid4().hex)
        if not wait:
            emit(started, as_json, lambda: console.print(f"job {started['job_id']} {started['status']}",
                                                         highlight=False))
            return
        job_id = str(started["job_id"])
        try:
            if as_json or not console.is_terminal:
                job = c.wait(job_id, timeout=timeout)
            else:
                with Live(job_view(c.get_job(job_id)), console=console, refresh_per_second=8,
                          transient=True) as live:
                    job = c.wait(job_id, timeout=timeout, poll_s=0.25,
                                 on_progress=lambda j: live.update(job_view(j)))
        except TimeoutError:
            last = c.get_job(job_id)
            emit(last, as_json, lambda: console.print(job_view(last)))
            raise fail(f"job {job_id} is still {last['status']} after {timeout:g} s"
                       " (it goes on; `supaflow jobs show` follows it)", 3) from None
        _finish(job, as_json)


# --------------------------------------------------------------------------- jobs


@jobs_app.command("ls")
def jobs_ls(
    workflow: Annotated[str | None, typer.Option(help="Only this workflow's jobs.")] = None,
    status: Annotated[JobStatus | None, typer.Option(help="Only jobs in this status.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 20,
    tenant: Annotated[bool, typer.Option("--tenant", help="All the jobs you may see.")] = False,
    url: UrlOpt = None, token_: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """The newest jobs first."""
    with client(target(url, token_)) as c:
        page = c.list_jobs_page(workflow_id=workflow, status=status, limit=limit,
                                scope="tenant" if tenant else None)

    def render() -> None:
        table = Table("job", "workflow", "status", "created")
        for job in page["jobs"]:
            table.add_row(str(job["job_id"]), f"{job['workflow_id']} v{job['workflow_version']}",
                          Text(job["status"], style=STATUS_STYLE.get(job["status"], "")),
                          str(job["created_at"]))
        console.print(table)
    emit(page, as_json, render)


@jobs_app.command("show")
def jobs_show(job_id: str, url: UrlOpt = None, token_: TokenOpt = None,
              as_json: JsonOpt = False) -> None:
    """One job, its steps and its result."""
    with client(target(url, token_)) as c:
        job = c.get_job(job_id)

    def render() -> None:
        console.print(job_view(job))
        if job.get("error_message"):
            console.print(f"[red]error:[/red] {job['error_message']}", highlight=False)
        if job.get("final_result") is not None:
            console.print("final_result:", json.dumps(job["final_result"], indent=2), highlight=False)
    emit(job, as_json, render)


@jobs_app.command("events")
def jobs_events(job_id: str, url: UrlOpt = None, token_: TokenOpt = None,
                as_json: JsonOpt = False) -> None:
    """A job's event log, in order."""
    with client(target(url, token_)) as c:
        events = list(c.job_events(job_id))

    def render() -> None:
        table = Table("seq", "event", "step", "attempt", "from", "to", "at")
        for e in events:
            table.add_row(str(e["seq"]), e["event_type"], e["step_id"] or "",
                          "" if e["attempt"] is None else str(e["attempt"]),
                          e["from_status"] or "", e["to_status"] or "", str(e["created_at"]))
        console.print(table)
    emit(events, as_json, render)


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, url: UrlOpt = None, token_: TokenOpt = None,
                as_json: JsonOpt = False) -> None:
    """Cancel a job; its unfinished steps never run."""
    with client(target(url, token_)) as c:
        result = c.cancel_job(job_id)
    emit(result, as_json, lambda: console.print(
        f"job {job_id}: {'cancelled' if result['cancelled'] else 'already ' + result['status']}",
        highlight=False))


@jobs_app.command("retry")
def jobs_retry(job_id: str, url: UrlOpt = None, token_: TokenOpt = None,
               as_json: JsonOpt = False) -> None:
    """Run a failed or cancelled job again from its unfinished steps."""
    with client(target(url, token_)) as c:
        result = c.retry_job(job_id)
    emit(result, as_json, lambda: console.print(
        f"job {job_id}: {result['status']}, rerunning {', '.join(result['retried_steps']) or 'its finish'}",
        highlight=False))


# --------------------------------------------------------------------------- workflows


@workflows_app.command("ls")
def workflows_ls(url: UrlOpt = None, token_: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """The workflows you may start (an admin: also inactive ones and drafts)."""
    with client(target(url, token_)) as c:
        listed = c.list_workflows()

    def render() -> None:
        table = Table("workflow", "version", "active", "draft", "description")
        for w in listed["workflows"]:
            table.add_row(w["workflow_id"], str(w["version"] or "-"),
                          {True: "yes", False: "no", None: ""}[w.get("active")],
                          "yes" if w.get("draft") else "", w["description"] or "")
        console.print(table)
    emit(listed, as_json, render)


@workflows_app.command("show")
def workflows_show(workflow_id: str, url: UrlOpt = None, token_: TokenOpt = None,
                   as_json: JsonOpt = False) -> None:
    """One workflow: its input schema; to an admin its definition, draft and versions."""
    with client(target(url, token_)) as c:
        shown = c.get_workflow(workflow_id)
    emit(shown, as_json, lambda: console.print_json(json.dumps(shown, default=str)))


# --------------------------------------------------------------------------- what starts jobs


def show_rows(rows: list[dict[str, Any]], columns: dict[str, Callable[[dict[str, Any]], Any]],
              as_json: bool, listed: Any) -> None:
    """A listing as a table (one column per entry of `columns`), or as JSON."""
    def render() -> None:
        table = Table(*columns)
        for row in rows:
            table.add_row(*("" if (v := get(row)) is None else str(v)
                            for get in columns.values()))
        console.print(table)
    emit(listed, as_json, render)


def removed(kind: str, object_id: str, what: str, as_json: bool, result: Any) -> None:
    emit(result, as_json, lambda: console.print(f"{kind} {object_id} removed{what}",
                                                highlight=False))


@schedules_app.command("ls")
def schedules_ls(url: UrlOpt = None, token_: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Each schedule, its last run, job and error (the service-role key)."""
    with client(target(url, token_)) as c:
        listed = c.list_schedules()
    show_rows(listed["schedules"], {
        "schedule": lambda r: r["schedule_id"], "workflow": lambda r: r["workflow_id"],
        "cron": lambda r: r["cron"], "timezone": lambda r: r["timezone"],
        "enabled": lambda r: "yes" if r["enabled"] else "no",
        "last run": lambda r: r["last_run_at"], "last error": lambda r: r["last_error"]},
        as_json, listed)


@schedules_app.command("rm")
def schedules_rm(schedule_id: str, url: UrlOpt = None, token_: TokenOpt = None,
                 as_json: JsonOpt = False) -> None:
    """Delete a schedule and its pg_cron job."""
    with client(target(url, token_)) as c:
        result = c.delete_schedule(schedule_id)
    removed("schedule", schedule_id, " (and its pg_cron job)", as_json, result)


@triggers_app.command("ls")
def triggers_ls(url: UrlOpt = None, token_: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Each trigger, its table and events, and its failed starts (the service-role key);
    --json also shows the SQL each installed."""
    with client(target(url, token_)) as c:
        listed = c.list_triggers()
    show_rows(listed["triggers"], {
        "trigger": lambda r: r["trigger_id"], "workflow": lambda r: r["workflow_id"],
        "table": lambda r: r["table_name"], "events": lambda r: ", ".join(r["events"]),
        "condition": lambda r: r["condition"], "failed starts": lambda r: r["failures"],
        "last failure": lambda r: r["last_failure"]}, as_json, listed)


@triggers_app.command("rm")
def triggers_rm(trigger_id: str, url: UrlOpt = None, token_: TokenOpt = None,
                as_json: JsonOpt = False) -> None:
    """Delete a trigger: its SQL trigger is dropped from the table."""
    with client(target(url, token_)) as c:
        result = c.delete_trigger(trigger_id)
    removed("trigger", trigger_id, " (and its SQL trigger)", as_json, result)


@webhooks_app.command("ls")
def webhooks_ls(url: UrlOpt = None, token_: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Each webhook, where senders post, and when it last started a job (admins); never
    their secrets."""
    with client(target(url, token_)) as c:
        listed = c.list_webhooks()
    show_rows(listed["webhooks"], {
        "webhook": lambda r: r["webhook_id"], "workflow": lambda r: r["workflow_id"],
        "signature": lambda r: r["signature"], "status": lambda r: r["status"],
        "path": lambda r: r["path"], "last triggered": lambda r: r["last_triggered_at"]},
        as_json, listed)


@webhooks_app.command("rm")
def webhooks_rm(webhook_id: str, url: UrlOpt = None, token_: TokenOpt = None,
                as_json: JsonOpt = False) -> None:
    """Delete a webhook: its deliveries are refused (404) from now on."""
    with client(target(url, token_)) as c:
        result = c.delete_webhook(webhook_id)
    removed("webhook", webhook_id, "", as_json, result)


@alerts_app.command("ls")
def alerts_ls(url: UrlOpt = None, token_: TokenOpt = None, as_json: JsonOpt = False,
              resolved: Annotated[bool, typer.Option(
                  "--resolved", help="Also the last 100 resolved.")] = False) -> None:
    """The alerts firing (operators: the service-role key or an admin of no tenant)."""
    with client(target(url, token_)) as c:
        listed = c.list_alerts(include_resolved=resolved)
    show_rows(listed["alerts"], {
        "rule": lambda r: r["rule_id"], "subject": lambda r: r["subject"],
        "status": lambda r: r["status"], "value": lambda r: r["value"],
        "threshold": lambda r: r["threshold"], "fired": lambda r: r["fired_at"],
        "resolved": lambda r: r["resolved_at"]}, as_json, listed)


# --------------------------------------------------------------------------- health


@app.command()
def health(url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """The deployment's health; exits 1 when unhealthy."""
    t = target(url, None)
    with client(t, None) as c:
        report = c.health()

    def render() -> None:
        for name, check in report["checks"].items():
            mark = "[green]ok[/green]" if check["ok"] else "[red]failing[/red]"
            detail = {k: v for k, v in check.items() if k != "ok"}
            console.print(f"{name}: {mark} {json.dumps(detail) if detail else ''}", highlight=False)
    emit(report, as_json, render)
    if report["status"] != "ok":
        raise typer.Exit(1)


def main() -> None:
    app()
