"""Faults to inject into a running stack, and waiting until it heals.

SIGKILL the gateway (executors and in-process orchestrators die with it) or PostgREST,
stop Postgres (the supervisor starts it again), hold or drop an orchestrator's dispatches
(`dispatch_proxy`), and deliver a step to its executor by hand (duplicates, stale lease
tokens). Orchestrator passes in processes of their own are in testkit.orchestrators.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import psycopg

from stack import postgres
from stack.config import StackConfig
from testkit.stack import Stack, is_up, stack_cli, stack_env

# Holding dispatches ----------------------------------------------------------------


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


@contextmanager
def postgrest_stopped(cfg: StackConfig) -> Iterator[None]:
    """PostgREST frozen (SIGSTOP): alive to the supervisor, answering nobody, until the
    block ends (SIGCONT)."""
    pid = _kill_child(cfg, "postgrest", signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


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
                http.get(f"{stack.api_url}/_gateway/health").raise_for_status()
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

    if is_up(cfg):
        return
    deadline = time.monotonic() + 60
    while supervisor.read_pid(cfg.supervisor_pid) and time.monotonic() < deadline:
        time.sleep(0.2)  # still tearing down
    for _ in range(90):  # a port may be held for a while (TIME_WAIT of an outgoing connection)
        result = stack_cli("up", env=stack_env(cfg))
        if result.returncode == 0:
            return
        time.sleep(1)
    raise RuntimeError(f"could not bring the stack back up:\n{result.stdout}\n{result.stderr}")


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
    from shared import state
    from shared.dispatch import executor_path
    from supaflow_models import mapping

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

