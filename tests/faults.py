"""Fault injection and invariant checks shared by tests/test_failures.py and bench/chaos.py.

- `Receiver`: a webhook server on 127.0.0.1 that is slow on purpose, or holds
  deliveries until told to let them go, so a step is reliably "mid-step" when a
  fault hits. Workflows reach it through webhook-call transformers.
- Faults: SIGKILL the gateway (executors and in-process orchestrators die with
  it), SIGKILL PostgREST, restart Postgres, SIGKILL an orchestrator pass running
  in its own process, and deliver a step to its executor by hand (duplicates,
  stale lease tokens).
- `Driver`: runs orchestrator passes back to back, standing in for pg_cron's
  one-minute tick so that recovery is observed in seconds.
- `check_invariants`: what must hold after any fault (every job terminal, no
  output recorded twice, an event log without gaps that replays to the final state).

`python -m tests.faults orchestrate BUDGET_S PASSES BASE_URL` runs orchestrator passes in a
process of its own (to be killed); `python -m tests.faults drive ...` is the Driver's
process. Both find their stack through the usual SUPAFLOW_* variables.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import psycopg
from psycopg.types.json import Jsonb

from shared.definitions import normalise
from stack import postgres
from stack.config import REPO, StackConfig
from tests.conftest import Stack, User

TERMINAL = ("completed", "failed", "cancelled")
WEBHOOK_SECRET_ENV = "SUPAFLOW_WEBHOOK_SECRET"  # set by the local stack's function environment


# The webhook receiver ------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    serial: int
    job_id: str
    step_id: str
    attempt: int
    path: str
    tag: str  # the body's "tag", if any


@dataclass
class Receiver:
    """Answers POST /ok at once, /slow/<ms> after a pause, /hold until released, /fail with a 500."""

    httpd: ThreadingHTTPServer
    deliveries: list[Delivery] = field(default_factory=list)
    answered: set[int] = field(default_factory=set)
    held_jobs: set[str] = field(default_factory=set)
    released: set[tuple[str, int]] = field(default_factory=set)
    cond: threading.Condition = field(default_factory=threading.Condition)
    thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def in_flight(self) -> int:
        with self.cond:
            return len(self.deliveries) - len(self.answered)

    def of(self, job_id: str, step_id: str | None = None, attempt: int | None = None) -> list[Delivery]:
        with self.cond:
            return [d for d in self.deliveries if d.job_id == job_id
                    and (step_id is None or d.step_id == step_id)
                    and (attempt is None or d.attempt == attempt)]

    def hold(self, job_id: str) -> None:
        with self.cond:
            self.held_jobs.add(job_id)

    def release(self, job_id: str, attempt: int | None = None) -> None:
        """Let one attempt's deliveries (or all of the job's, now and later) be answered."""
        with self.cond:
            if attempt is None:
                self.held_jobs.discard(job_id)
            else:
                self.released.add((job_id, attempt))
            self.cond.notify_all()

    def release_all(self) -> None:
        with self.cond:
            self.held_jobs.clear()
            self.cond.notify_all()

    def wait_for(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.02)

    def _must_wait(self, job_id: str, attempt: int) -> bool:
        return job_id in self.held_jobs and (job_id, attempt) not in self.released

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            tag = str(json.loads(body or b"{}").get("tag", ""))
        except (ValueError, AttributeError):
            tag = ""
        with self.cond:
            delivery = Delivery(
                len(self.deliveries) + 1, headers.get("x-supaflow-job-id", ""),
                headers.get("x-supaflow-step-id", ""), int(headers.get("x-supaflow-attempt", "0") or 0),
                path, tag)
            self.deliveries.append(delivery)
        try:
            if path.startswith("/slow/"):
                time.sleep(int(path.rsplit("/", 1)[1]) / 1000)
            elif path == "/hold":
                with self.cond:
                    self.cond.wait_for(lambda: not self._must_wait(delivery.job_id, delivery.attempt),
                                       timeout=120)
            if path == "/fail":
                return 500, {"error": "failing on purpose", "serial": delivery.serial}
            return 200, {"serial": delivery.serial, "attempt": delivery.attempt}
        finally:
            with self.cond:
                self.answered.add(delivery.serial)

    def close(self) -> None:
        self.release_all()
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.thread is not None:
            self.thread.join(5)


def start_receiver() -> Receiver:
    rec: Receiver

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, answer = rec.handle(self.path, headers, body)
            raw = json.dumps(answer).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)
            except OSError:
                pass  # the executor that called us was killed

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    rec = Receiver(httpd)
    rec.thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    rec.thread.start()
    return rec


@contextmanager
def receiver() -> Iterator[Receiver]:
    rec = start_receiver()
    try:
        yield rec
    finally:
        rec.close()


@dataclass(frozen=True)
class Dispatch:
    """One executor request: a batch of (job_id, step_id, attempt)."""

    serial: int
    steps: tuple[tuple[str, str, int], ...]


@dataclass
class DispatchProxy:
    """Stands between an orchestrator and the executors and holds every dispatch until the test
    forwards it (the executor runs it) or drops it (it is never delivered)."""

    httpd: ThreadingHTTPServer
    target: str
    held: list[Dispatch] = field(default_factory=list)
    decisions: dict[int, str] = field(default_factory=dict)
    answered: set[int] = field(default_factory=set)
    cond: threading.Condition = field(default_factory=threading.Condition)
    thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{int(self.httpd.server_address[1])}"

    def dispatches(self) -> list[Dispatch]:
        with self.cond:
            return list(self.held)

    def decide(self, dispatch: Dispatch, decision: str) -> None:
        with self.cond:
            self.decisions[dispatch.serial] = decision
            self.cond.notify_all()

    def settled(self) -> bool:
        with self.cond:
            return all(d.serial in self.answered for d in self.held if d.serial in self.decisions)

    def close(self) -> None:
        with self.cond:
            for dispatch in self.held:
                self.decisions.setdefault(dispatch.serial, "drop")
            self.cond.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.thread is not None:
            self.thread.join(5)


@contextmanager
def dispatch_proxy(target: str) -> Iterator[DispatchProxy]:
    proxy: DispatchProxy

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            steps = tuple((s["job_id"], s["step_id"], s["attempt"]) for s in json.loads(body)["steps"])
            with proxy.cond:
                dispatch = Dispatch(len(proxy.held) + 1, steps)
                proxy.held.append(dispatch)
                proxy.cond.notify_all()
                proxy.cond.wait_for(lambda: dispatch.serial in proxy.decisions, timeout=120)
                decision = proxy.decisions.get(dispatch.serial, "drop")
            try:
                if decision == "forward":
                    answer = httpx.post(f"{proxy.target}{self.path}", content=body, timeout=60, headers={
                        "Authorization": self.headers.get("Authorization", ""),
                        "Content-Type": "application/json"})
                    with contextlib.suppress(OSError):
                        self.send_response(answer.status_code)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(answer.content)))
                        self.end_headers()
                        self.wfile.write(answer.content)
                else:
                    self.close_connection = True  # never delivered: no answer at all
            finally:
                with proxy.cond:
                    proxy.answered.add(dispatch.serial)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    proxy = DispatchProxy(httpd, target)
    proxy.thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    proxy.thread.start()
    try:
        yield proxy
    finally:
        proxy.close()


# Definitions ---------------------------------------------------------------------


def add_transformer(stack: Stack, ttype: str, config: dict[str, Any], prefix: str = "faults") -> str:
    tid = f"{prefix}-{ttype}-{uuid.uuid4().hex[:8]}"
    stack.sql(
        "insert into workflow.transformers (id, type, description, config, target_function)"
        " values (%s, %s, 'fault tests', %s, %s)",
        (tid, ttype, Jsonb(config), f"execute-{ttype}"),
    )
    return tid


def webhook_transformer(stack: Stack, url: str) -> str:
    return add_transformer(stack, "webhook-call", {"url": url, "secret_env_var": WEBHOOK_SECRET_ENV})


def failing_transformer(stack: Stack, message: str = "broken on purpose") -> str:
    return add_transformer(stack, "transform", {"fail": {"message": message, "retryable": True}})


FAST_RETRY = {"max_retries": 5, "initial_delay_s": 0.2, "max_delay_s": 2.0, "jitter": 0.2}
# A step's lease is its timeout_s + 15 s: short timeouts let a killed executor's steps come back fast.
STEP_TIMEOUT_S = 2


def diamond(hook: str, *, hook_timeout_s: int = 3, retry: dict[str, Any] | None = None) -> dict[str, Any]:
    """a -> (hook: webhook-call, side: transform) -> join. Every job of it should complete."""
    t = STEP_TIMEOUT_S
    return {
        "input_schema": {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}},
        "retry": retry or FAST_RETRY,
        "steps": [
            {"id": "a", "transformer": "transform", "timeout_s": t, "inputs": {"n": "$.input.n"}},
            {"id": "hook", "transformer": hook, "depends_on": ["a"], "timeout_s": hook_timeout_s,
             "inputs": {"body": {"n": "$.steps.a.output.n", "tag": "hook-{{ $.input.n }}"}}},
            {"id": "side", "transformer": "transform", "depends_on": ["a"], "timeout_s": t,
             "inputs": {"double": ["$.steps.a.output.n", "$.steps.a.output.n"]}},
            {"id": "join", "transformer": "transform", "depends_on": ["hook", "side"], "timeout_s": t,
             "inputs": {"n": "$.input.n", "status": "$.steps.hook.output.status_code",
                        "side": "$.steps.side.output.double"}},
        ],
        "output": {"n": "$.steps.join.output.n", "status": "$.steps.join.output.status"},
    }


def doomed(broken: str) -> dict[str, Any]:
    """a -> broken (fails every attempt) -> never. Every job of it should fail with a reason."""
    t = STEP_TIMEOUT_S
    return {
        "retry": {"max_retries": 1, "initial_delay_s": 0.2, "max_delay_s": 1.0},
        "steps": [
            {"id": "a", "transformer": "transform", "timeout_s": t, "inputs": {"n": "$.input.n"},
             "retry": FAST_RETRY},
            {"id": "broken", "transformer": broken, "timeout_s": t, "inputs": {"n": "$.steps.a.output.n"}},
            {"id": "never", "transformer": "transform", "timeout_s": t,
             "inputs": {"x": "$.steps.broken.output"}},
        ],
    }


def chain(length: int) -> dict[str, Any]:
    """Transform steps in a row: the cheap bulk of the soak."""
    t = STEP_TIMEOUT_S
    steps: list[dict[str, Any]] = [
        {"id": "s0", "transformer": "transform", "timeout_s": t, "inputs": {"n": "$.input.n"}}]
    for i in range(1, length):
        steps.append({"id": f"s{i}", "transformer": "transform", "timeout_s": t,
                      "inputs": {"n": f"$.steps.s{i - 1}.output.n", "i": i}})
    return {"retry": FAST_RETRY, "steps": steps}


def create_workflow(stack: Stack, definition: dict[str, Any], prefix: str = "faults") -> str:
    wid = f"{prefix}-{uuid.uuid4().hex[:10]}"
    stack.sql("insert into workflow.workflows (id, definition) values (%s, %s)", (wid, Jsonb(normalise(definition))))
    return wid


def unlimited_starts(stack: Stack, user: User) -> None:
    stack.sql("insert into workflow.rate_limits (user_id, max_starts, window_seconds)"
              " values (%s, 1000000, 60)", (user.id,))


# Starting jobs -------------------------------------------------------------------


class StartFailed(RuntimeError):
    pass


def start_job(http: httpx.Client, stack: Stack, user: User, workflow_id: str, input_data: dict[str, Any],
              *, key: str | None = None, deadline_s: float = 60.0, retries: list[str] | None = None) -> str:
    """POST /workflows/start (which kicks the orchestrator), retried through outages.

    The idempotency key makes the retries safe: a start whose answer was lost
    returns the job it created instead of a second one.
    """
    key = key or uuid.uuid4().hex
    body = {"workflow_id": workflow_id, "input_data": input_data, "idempotency_key": key}
    deadline = time.monotonic() + deadline_s
    last = ""
    while time.monotonic() < deadline:
        try:
            response = http.post(f"{stack.api_url}/workflows/start", json=body,
                                 headers={"Authorization": f"Bearer {user.token}"}, timeout=15)
        except httpx.HTTPError as exc:
            last = repr(exc)
        else:
            if response.status_code in (200, 202):
                return str(response.json()["job_id"])
            last = f"HTTP {response.status_code} {response.text[:200]}"
            if response.status_code < 500 and response.status_code != 429:
                raise StartFailed(last)
        if retries is not None:
            retries.append(last)
        time.sleep(0.3)
    raise StartFailed(f"could not start a job within {deadline_s:.0f} s: {last}")


def start_job_quietly(http: httpx.Client, stack: Stack, user: User, workflow_id: str,
                      input_data: dict[str, Any]) -> str:
    """start_job over RPC as the service role, for `user`: the same SQL as
    start-workflow, but no orchestrator kick."""
    version = stack.sql("select version from workflow.workflows where id = %s", (workflow_id,))[0][0]
    response = http.post(
        f"{stack.api_url}/rest/v1/rpc/start_job",
        json={"p_user_id": user.id, "p_workflow_id": workflow_id, "p_workflow_version": version,
              "p_input": input_data},
        headers={**stack.service_headers(), "Content-Profile": "workflow"},
        timeout=15,
    )
    response.raise_for_status()
    return str(response.json()["job_id"])


# Driving the orchestrator --------------------------------------------------------


class Driver:
    """Short orchestrator passes back to back, in a process of their own: pg_cron's safety
    net at a one-second rather than one-minute tick, so recovery shows in seconds.

    Passes run with a small budget (not through POST /internal/orchestrator, whose
    budget is the gateway's), so each one starts with lease recovery soon after the last.
    """

    def __init__(self, stack: Stack, budget_s: float = 3.0, pause_s: float = 0.5) -> None:
        self.cfg = stack.cfg
        self.summaries = stack.cfg.logs / f"driver-{uuid.uuid4().hex[:8]}.jsonl"
        self.log_path = stack.cfg.logs / "driver.log"
        self.args = ["drive", str(budget_s), str(pause_s), str(self.summaries)]
        self.proc: subprocess.Popen[bytes] | None = None

    def passes(self) -> list[dict[str, int]]:
        try:
            lines = self.summaries.read_text().splitlines()
        except OSError:
            return []
        return [json.loads(line) for line in lines if line.startswith("{")]

    def recovered(self) -> int:
        return sum(p.get("recovered", 0) for p in self.passes())

    def __enter__(self) -> Driver:
        self.proc = _spawn(self.cfg, self.args, self.log_path)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _spawn(cfg: StackConfig, args: list[str], log_path: Any) -> subprocess.Popen[bytes]:
    """`python -m tests.faults ARGS` against the stack `cfg`, logging to `log_path`."""
    env = {**os.environ, "SUPAFLOW_STATE_DIR": str(cfg.state_dir),
           **{k: str(v) for k, v in cfg.ports().items()}}
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "tests.faults", *args], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


# Faults ---------------------------------------------------------------------------


def _pid(cfg: StackConfig, name: str) -> int:
    path = cfg.state_dir / "pids" / f"{name}.pid"
    deadline = time.monotonic() + 15
    while True:
        try:
            pid = int(path.read_text().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _kill_child(cfg: StackConfig, name: str, sig: signal.Signals) -> int:
    pid = _pid(cfg, name)
    os.kill(pid, sig)
    return pid


def wait_restarted(cfg: StackConfig, name: str, old_pid: int, timeout: float = 30) -> float:
    """Until the supervisor has started a new `name`; returns how long that took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            pid = int((cfg.state_dir / "pids" / f"{name}.pid").read_text().strip())
            if pid != old_pid:
                os.kill(pid, 0)
                return time.monotonic() - started
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"the supervisor did not restart {name} within {timeout:.0f} s")


def kill_gateway(cfg: StackConfig) -> int:
    """SIGKILL the gateway: every executor and orchestrator pass running in it dies mid-flight."""
    return _kill_child(cfg, "gateway", signal.SIGKILL)


def kill_postgrest(cfg: StackConfig) -> int:
    return _kill_child(cfg, "postgrest", signal.SIGKILL)


def stop_postgres(cfg: StackConfig) -> None:
    """pg_ctl stop -m fast: every connection drops, in-flight transactions roll back, and the
    supervisor's watchdog (every 2 s) starts Postgres again.

    Not stack.postgres.restart(): its pg_ctl restart races that watchdog (see test_failures).
    """
    postgres.stop(cfg)


def wait_postgres(cfg: StackConfig, timeout: float = 30) -> float:
    started = time.monotonic()
    while not postgres.is_running(cfg):
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"Postgres was not started again within {timeout:.0f} s")
        time.sleep(0.1)
    return time.monotonic() - started


def wait_healthy(stack: Stack, timeout: float = 60) -> float:
    """Gateway, PostgREST (through the gateway) and Postgres all answer; returns the seconds waited."""
    started = time.monotonic()
    last = ""
    with httpx.Client(timeout=3) as http:
        while time.monotonic() - started < timeout:
            try:
                http.get(f"{stack.api_url}/health").raise_for_status()
                http.get(f"{stack.api_url}/rest/v1/transformers", params={"select": "id", "limit": "1"},
                         headers={**stack.service_headers(), "Accept-Profile": "workflow"}
                         ).raise_for_status()
                stack.sql("select 1")
                return time.monotonic() - started
            except (httpx.HTTPError, psycopg.Error) as exc:
                last = repr(exc)
            time.sleep(0.1)
    raise TimeoutError(f"the stack was not healthy within {timeout:.0f} s: {last}")


def ensure_stack_up(cfg: StackConfig) -> None:
    """Bring the stack back (same state dir and ports) if its supervisor is gone."""
    from stack import supervisor

    if supervisor.read_pid(cfg.supervisor_pid) and (cfg.state_dir / "ready").exists():
        return
    deadline = time.monotonic() + 60
    while supervisor.read_pid(cfg.supervisor_pid) and time.monotonic() < deadline:
        time.sleep(0.2)  # still tearing down
    env = {**os.environ, "SUPAFLOW_STATE_DIR": str(cfg.state_dir),
           **{k: str(v) for k, v in cfg.ports().items()}}
    for _ in range(90):  # a port may be held for a while (TIME_WAIT of an outgoing connection)
        result = subprocess.run([sys.executable, "-m", "stack", "up"], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=240, check=False)
        if result.returncode == 0:
            return
        time.sleep(1)
    raise RuntimeError(f"could not bring the stack back up:\n{result.stdout}\n{result.stderr}")


class ExternalOrchestrator:
    """Orchestrator passes in a process of their own, so they can be killed apart from the executors.

    Several passes at once claim a fair share of the steps even when other passes (pg_cron's,
    start-workflow's kicks) compete for them.
    """

    def __init__(self, cfg: StackConfig, budget_s: float = 60, passes: int = 1,
                 base_url: str | None = None) -> None:
        self.log_path = cfg.logs / f"external-orchestrator-{uuid.uuid4().hex[:8]}.log"
        self.proc = _spawn(cfg, ["orchestrate", str(budget_s), str(passes), base_url or cfg.api_url],
                           self.log_path)

    def wait_ready(self, timeout: float = 30) -> None:
        """Until its imports are done and the pass is about to claim."""
        deadline = time.monotonic() + timeout
        while "pass starting" not in self.log_path.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the orchestrator process did not start: {self.log_path.read_text()}")
            time.sleep(0.05)

    def kill(self) -> int:
        self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(10)


def _function_env() -> StackConfig:
    from stack.environment import function_environment
    from stack.secrets import load

    cfg = StackConfig.from_env()
    os.environ.update(function_environment(cfg, load(cfg.secrets_file)))
    return cfg


def _orchestrate_main(budget_s: float, passes: int, base_url: str) -> int:
    _function_env()
    from shared.orchestrator import PassSummary, run_pass

    async def main() -> None:
        # A short pass first: lease recovery and stranded jobs are done before we say we are ready.
        await run_pass(base_url, 0.01)
        print("pass starting", flush=True)
        deadline = time.monotonic() + budget_s
        # A pass that finds nothing runnable ends at once, so start passes again until the
        # budget ends (or the test kills us): jobs started after we are ready still find one.
        while time.monotonic() < deadline:
            summaries: list[PassSummary] = await asyncio.gather(
                *(run_pass(base_url, deadline - time.monotonic()) for _ in range(passes)))
            for summary in summaries:
                if summary.claimed:
                    print(json.dumps(summary.as_dict()), flush=True)
            await asyncio.sleep(0.02)

    asyncio.run(main())
    return 0


def _drive_main(budget_s: float, pause_s: float, summaries: str) -> int:
    cfg = _function_env()
    from shared.orchestrator import run_pass

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with open(summaries, "a") as out:
        while True:
            try:
                summary = asyncio.run(run_pass(cfg.api_url, budget_s))
                out.write(json.dumps(summary.as_dict()) + "\n")
                out.flush()
            except Exception as exc:  # noqa: BLE001 - the database may be restarting; try again
                print(f"pass failed: {exc!r}", flush=True)
            time.sleep(pause_s)


# Delivering a step by hand -------------------------------------------------------


@dataclass(frozen=True)
class StepRow:
    job_id: str
    step_id: str
    status: str
    attempt: int
    lease_token: str | None
    output: Any


def step_row(stack: Stack, job_id: str, step_id: str) -> StepRow:
    rows = stack.sql("select status, attempt, lease_token::text, output from workflow.job_steps"
                     " where job_id = %s and step_id = %s", (job_id, step_id))
    status, attempt, token, output = rows[0]
    return StepRow(job_id, step_id, status, attempt, token, output)


def step_payload(stack: Stack, job_id: str, step_id: str, lease_token: str, attempt: int,
                 config_overrides: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """What the orchestrator POSTs for this attempt, and the executor route it POSTs it to."""
    from shared import mapping, state
    from shared.dispatch import executor_path

    (definition, input_data, step_data, tid, ttype, config, target), = stack.sql(
        "select s.definition, j.input_data, j.step_data, t.id, t.type, t.config, t.target_function"
        " from workflow.job_steps s join workflow.jobs j on j.id = s.job_id"
        " join workflow.transformers t on t.id = s.transformer_id"
        " where s.job_id = %s and s.step_id = %s", (job_id, step_id))
    inputs = mapping.resolve(definition.get("inputs", {}), state.mapping_context(input_data, step_data))
    payload = {
        "job_id": job_id, "step_id": step_id, "attempt": attempt, "lease_token": lease_token,
        "timeout_s": int(definition.get("timeout_s", 300)), "inputs": inputs,
        "transformer": {"id": tid, "type": ttype, "config": {**config, **(config_overrides or {})}},
    }
    return executor_path(target), payload


def deliver(stack: Stack, route: str, payload: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    """POST a step to its executor as the orchestrator would (a batch of one); returns
    the executor's answer for it."""
    response = httpx.post(f"{stack.api_url}{route}", json={"steps": [payload]},
                          headers=stack.internal_headers(), timeout=timeout)
    assert response.status_code == 200, response.text
    # The executor may also have run steps this one made ready: pick this step's answer.
    (result,) = [r for r in response.json()["results"]
                 if (r["job_id"], r["step_id"]) == (payload["job_id"], payload["step_id"])]
    assert isinstance(result, dict)
    return result


def expire_lease(stack: Stack, job_id: str, step_id: str) -> None:
    """Move a running step's lease into the past and let recovery fail the attempt."""
    stack.sql("update workflow.job_steps set lease_expires_at = now() - interval '1 s'"
              " where job_id = %s and step_id = %s and status = 'running'", (job_id, step_id))
    deadline = time.monotonic() + 10
    while step_row(stack, job_id, step_id).status == "running":
        if time.monotonic() > deadline:
            raise TimeoutError("recover_expired_leases did not take the lease back")
        stack.sql("select workflow.recover_expired_leases()")
        time.sleep(0.05)


def snapshot(stack: Stack, job_id: str) -> tuple[Any, ...]:
    """Everything a step's recording could change about a job."""
    job = stack.sql("select status, step_data, final_result, error_message, retry_count,"
                    " last_updated_at from workflow.jobs where id = %s", (job_id,))
    steps = stack.sql("select step_id, status, attempt, lease_token, output, error, updated_at"
                      " from workflow.job_steps where job_id = %s order by step_id", (job_id,))
    events = stack.sql("select seq, event_type, step_id, attempt from workflow.job_events"
                       " where job_id = %s order by seq", (job_id,))
    return (job, steps, events)


# Waiting and checking ------------------------------------------------------------


def statuses(stack: Stack, job_ids: Iterable[str]) -> dict[str, str]:
    rows = stack.sql("select id::text, status from workflow.jobs where id = any(%s::uuid[])",
                     (list(job_ids),))
    return {r[0]: r[1] for r in rows}


def wait_terminal(stack: Stack, job_ids: list[str], timeout: float) -> float:
    """Until every job is completed, failed or cancelled; returns the seconds waited."""
    started = time.monotonic()
    while True:
        try:
            found = statuses(stack, job_ids)
        except psycopg.Error:
            found = {}
        if len(found) == len(job_ids) and all(s in TERMINAL for s in found.values()):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            stuck = {j: found.get(j, "?") for j in job_ids if found.get(j) not in TERMINAL}
            raise AssertionError(
                f"{len(stuck)} of {len(job_ids)} jobs not terminal after {timeout:.0f} s:\n"
                + describe(stack, list(stuck)[:5]))
        time.sleep(0.25)


def describe(stack: Stack, job_ids: list[str]) -> str:
    """A readable dump of some jobs, their steps and their events, for failure messages."""
    lines = []
    for job_id in job_ids:
        (status, error), = stack.sql("select status, error_message from workflow.jobs where id = %s",
                                     (job_id,))
        lines.append(f"job {job_id}: {status} {error or ''}")
        for row in stack.sql("select step_id, status, attempt, lease_expires_at, next_attempt_at, error"
                             " from workflow.job_steps where job_id = %s order by id", (job_id,)):
            lines.append(f"  step {row}")
        for row in stack.sql("select seq, event_type, step_id, attempt, from_status, to_status"
                             " from workflow.job_events where job_id = %s order by seq", (job_id,)):
            lines.append(f"  event {row}")
    return "\n".join(lines)


STEP_EVENT_STATUS = {
    "step_started": "running",
    "step_completed": "completed",
    "step_retry_scheduled": "ready",
    "step_failed": "failed",
}


@dataclass
class Findings:
    """What the invariant check saw: violations, and counts worth reporting."""

    violations: list[str] = field(default_factory=list)
    jobs: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    lease_recoveries: int = 0
    max_attempt: int = 0

    def summary(self) -> str:
        return (f"jobs {dict(self.jobs)}; steps retried after an expired lease: {self.lease_recoveries}; "
                f"highest attempt: {self.max_attempt}; violations: {len(self.violations)}")


def check_invariants(stack: Stack, job_ids: list[str], *, must_complete: Iterable[str] = (),
                     must_fail: Iterable[str] = ()) -> Findings:
    """Every job terminal (completed, or failed with a reason); no step output recorded twice;
    job_events numbered 1..n without gaps and replaying to the jobs and job_steps rows."""
    found = Findings()
    v = found.violations
    jobs = {r[0]: r[1:] for r in stack.sql(
        "select id::text, status, error_message, final_result, step_data"
        " from workflow.jobs where id = any(%s::uuid[])", (job_ids,))}
    steps: dict[str, dict[str, tuple[Any, ...]]] = defaultdict(dict)
    for job_id, step_id, status, attempt, output, token in stack.sql(
            "select job_id::text, step_id, status, attempt, output, lease_token"
            " from workflow.job_steps where job_id = any(%s::uuid[])", (job_ids,)):
        steps[job_id][step_id] = (status, attempt, output, token)
    events: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for row in stack.sql(
            "select job_id::text, seq, event_type, step_id, attempt, from_status, to_status, detail"
            " from workflow.job_events where job_id = any(%s::uuid[]) order by job_id, seq", (job_ids,)):
        events[row[0]].append(row[1:])

    for job_id in job_ids:
        if job_id not in jobs:
            v.append(f"{job_id}: no such job")
            continue
        status, error, final_result, step_data = jobs[job_id]
        found.jobs[status] += 1
        where = f"job {job_id} ({status})"
        if status not in ("completed", "failed"):
            v.append(f"{where}: not completed or failed")
        if status == "failed" and not (error or "").strip():
            v.append(f"{where}: failed without a reason")
        job_steps = steps[job_id]
        if status == "completed":
            if final_result is None:
                v.append(f"{where}: completed without final_result")
            not_done = [s for s, row in job_steps.items() if row[0] != "completed"]
            if not_done:
                v.append(f"{where}: completed but steps {not_done} are not")
        for step_id, (step_status, attempt, output, token) in job_steps.items():
            found.max_attempt = max(found.max_attempt, attempt)
            if status in TERMINAL and step_status in ("running", "ready", "waiting"):
                v.append(f"{where}: step {step_id} still {step_status}")
            if token is not None and step_status != "running":
                v.append(f"{where}: step {step_id} is {step_status} but holds a lease")
            if step_status == "completed" and (step_data or {}).get(step_id, object()) != output:
                v.append(f"{where}: step_data[{step_id}] differs from the step's output")
        if set(step_data or {}) - {s for s, row in job_steps.items() if row[0] == "completed"}:
            v.append(f"{where}: step_data holds outputs of steps that did not complete")

        log = events[job_id]
        seqs = [e[0] for e in log]
        if seqs != list(range(1, len(log) + 1)):
            v.append(f"{where}: event seq is not 1..{len(log)} without gaps: {seqs}")
        _replay(where, log, status, job_steps, found)
    return _expectations(found, jobs, must_complete, must_fail)


def _replay(where: str, log: list[tuple[Any, ...]], status: str,
            job_steps: dict[str, tuple[Any, ...]], found: Findings) -> None:
    v = found.violations
    if not log or log[0][1] != "job_created":
        v.append(f"{where}: the log does not start with job_created")
    job_status = "pending"
    step_status: dict[str, str] = {}
    step_attempt: Counter[str] = Counter()
    completions: Counter[str] = Counter()
    terminal_at: int | None = None
    for seq, event_type, step_id, attempt, from_status, to_status, detail in log:
        found.events[event_type] += 1
        if terminal_at is not None:
            v.append(f"{where}: event {seq} {event_type} after the job ended at seq {terminal_at}")
        if event_type.startswith("job_") and event_type != "job_created":
            if from_status != job_status:
                v.append(f"{where}: event {seq} {event_type} from {from_status}, "
                         f"but the job was {job_status}")
            job_status = to_status
            if to_status in TERMINAL:
                terminal_at = seq
        elif event_type == "step_started":
            step_attempt[step_id] += 1
            if attempt != step_attempt[step_id]:
                v.append(f"{where}: step {step_id} started attempt {attempt}, "
                         f"expected {step_attempt[step_id]}")
        if event_type == "step_completed":
            completions[step_id] += 1
        if event_type == "step_retry_scheduled" and "lease expired" in str((detail or {}).get("error")):
            found.lease_recoveries += 1
        if event_type in STEP_EVENT_STATUS:
            step_status[step_id] = STEP_EVENT_STATUS[event_type]
        elif event_type == "steps_ready":
            for ready in (detail or {}).get("steps", []):
                step_status[ready] = "ready"
    if job_status != status:
        v.append(f"{where}: the event log ends in {job_status}")
    for step_id, count in completions.items():
        if count > 1:
            v.append(f"{where}: step {step_id} recorded its output {count} times")
    for step_id, (row_status, attempt, _output, _token) in job_steps.items():
        if step_attempt[step_id] != attempt:
            v.append(f"{where}: step {step_id} attempt {attempt} but {step_attempt[step_id]} step_started")
        replayed = step_status.get(step_id, "waiting")
        if row_status == "completed" and completions[step_id] != 1:
            v.append(f"{where}: step {step_id} completed with {completions[step_id]} step_completed events")
        # fail_job and cancel_job cancel the unfinished steps without a step event.
        if replayed != row_status and not (row_status == "cancelled" and status in ("failed", "cancelled")
                                           and replayed in ("waiting", "ready", "running")):
            v.append(f"{where}: step {step_id} is {row_status} but its events say {replayed}")
        if row_status != "completed" and step_id in completions:
            v.append(f"{where}: step {step_id} is {row_status} after a step_completed event")


def _expectations(found: Findings, jobs: dict[str, tuple[Any, ...]], must_complete: Iterable[str],
                  must_fail: Iterable[str]) -> Findings:
    for job_id in must_complete:
        if job_id in jobs and jobs[job_id][0] != "completed":
            found.violations.append(
                f"job {job_id}: expected completed, is {jobs[job_id][0]}: {jobs[job_id][1]}")
    for job_id in must_fail:
        if job_id in jobs and jobs[job_id][0] != "failed":
            found.violations.append(f"job {job_id}: expected failed, is {jobs[job_id][0]}")
    return found


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "orchestrate":
        sys.exit(_orchestrate_main(float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
    if len(sys.argv) == 5 and sys.argv[1] == "drive":
        sys.exit(_drive_main(float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]))
    print("usage: python -m tests.faults orchestrate BUDGET_S PASSES BASE_URL\n"
          "       python -m tests.faults drive BUDGET_S PAUSE_S SUMMARIES_FILE", file=sys.stderr)
    sys.exit(2)
