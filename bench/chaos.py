"""The chaos soak (`make chaos`): at least 1,000 workflows while faults hit the stack at random.

It brings up a stack of its own (a fresh cluster in `.stack-tests/chaos-<id>/`, ports
61421-61425, outside Linux's ephemeral port range so no outgoing connection can hold
one), starts `--workflows` jobs through POST /workflows/start from parallel clients,
and meanwhile injects, every few seconds, one of:

- gateway-kill      SIGKILL the gateway: executors die mid-step, in-process orchestrator
                    passes mid-dispatch, queued kicks are lost;
- postgrest-kill    SIGKILL PostgREST (the supervisor restarts it);
- postgres-restart  stop Postgres (fast: connections drop, transactions roll back) and let
                    the supervisor start it again (`--pg-ctl-restart`: stack.postgres.restart
                    instead, which races the supervisor; see tests/test_failures.py);
- orchestrator-kill SIGKILL orchestrator passes running in a process of their own, with
                    dispatches in flight: half are delivered after its death, half never;
- duplicate         deliver a running step to its executor twice more with its lease token;
- stale             expire a running step's lease, let recovery retry it, and deliver the
                    attempt with its old token: it must be refused as stale.

A stand-in for pg_cron runs short orchestrator passes back to back (testkit.orchestrators.Driver).
At the end every job must be terminal: completed, or failed with a reason (the
`doomed` workflow always fails; the others may fail only once a step's retries are
exhausted), no step output recorded twice, and every job's event log gap-free and
replaying to its final rows. It prints what it injected and what it found, and exits
1 on any violation (2 when the time budget ran out first).

    python -m bench.chaos [--workflows 1000] [--minutes 14] [--seed N] [--keep]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx

from stack import postgres, supervisor
from stack.config import REPO, StackConfig
from stack.secrets import load
from testkit import faults
from testkit.invariants import Findings, check_invariants
from testkit.jobs import StartFailed, start_job, start_job_quietly, wait_terminal
from testkit.orchestrators import Driver, ExternalOrchestrator
from testkit.receiver import Receiver, webhook_receiver
from testkit.stack import Stack, User, stack_cli, unlimited_starts
from testkit.workflows import (
    FAST_RETRY,
    STEP_TIMEOUT_S,
    chain,
    create_workflow,
    diamond,
    doomed,
    failing_transformer,
    webhook_transformer,
)

PORT_BASE = 61421
# (workflow kind, weight): mostly cheap chains, a diamond with a slow webhook, some doomed.
MIX = (("chain3", 50), ("diamond", 30), ("chain6", 10), ("doomed", 10))
FAULTS = (("gateway-kill", 3), ("postgrest-kill", 2), ("postgres-restart", 2),
          ("orchestrator-kill", 2), ("duplicate", 3), ("stale", 2))
EXHAUSTED = re.compile(r"\(attempt (\d+) of (\d+)\)")


def log(start: float, message: str) -> None:
    print(f"[{time.monotonic() - start:7.1f}s] {message}", flush=True)


@contextmanager
def own_stack(keep: bool, concurrency: int) -> Iterator[Stack]:
    """A fresh stack in .stack-tests/chaos-<id>, never the default one; removed afterwards."""
    parent = REPO / ".stack-tests"
    parent.mkdir(exist_ok=True)
    os.chmod(parent, 0o711)  # noqa: S103 - the postgres user must traverse it
    state = parent / f"chaos-{uuid.uuid4().hex[:8]}"
    ports = {name: str(PORT_BASE + i) for i, name in enumerate(
        ("SUPAFLOW_API_PORT", "SUPAFLOW_DB_PORT", "SUPAFLOW_REST_PORT", "SUPAFLOW_S3_PORT",
         "SUPAFLOW_GEMINI_PORT"))}
    env = {**os.environ, "SUPAFLOW_STATE_DIR": str(state), **ports,
           "SUPAFLOW_LOCAL_CONCURRENCY": str(concurrency)}
    up = stack_cli("up", env=env, timeout=300)
    if up.returncode != 0:
        raise SystemExit(f"the chaos stack did not start:\n{up.stdout}\n{up.stderr}")
    cfg = StackConfig(state, api_port=PORT_BASE, db_port=PORT_BASE + 1, rest_port=PORT_BASE + 2,
                      s3_port=PORT_BASE + 3, gemini_port=PORT_BASE + 4)
    try:
        yield Stack(cfg, load(cfg.secrets_file))
    finally:
        stack_cli("down", env=env, timeout=300)
        if keep:
            print(f"stack state kept in {state}")
        else:
            shutil.rmtree(state, ignore_errors=True)


@dataclass
class Injection:
    at: float
    kind: str
    detail: str


@dataclass
class Soak:
    stack: Stack
    args: argparse.Namespace
    rng: random.Random
    t0: float = field(default_factory=time.monotonic)
    jobs: dict[str, str] = field(default_factory=dict)  # job id -> workflow kind
    workflows: dict[str, str] = field(default_factory=dict)  # kind -> workflow id
    injections: list[Injection] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    start_retries: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    user: User | None = None

    # Setup and load -----------------------------------------------------------------

    def setup(self, receiver: Receiver) -> User:
        user = self.user = self.stack.create_user()
        unlimited_starts(self.stack, user)
        hook = webhook_transformer(self.stack, receiver.url("/slow/400"))
        definitions = {"chain3": chain(3, timeout_s=STEP_TIMEOUT_S, retry=FAST_RETRY),
                       "chain6": chain(6, timeout_s=STEP_TIMEOUT_S, retry=FAST_RETRY),
                       "diamond": diamond(hook, hook_timeout_s=3),
                       "doomed": doomed(failing_transformer(self.stack))}
        self.workflows = {kind: create_workflow(self.stack, d, prefix=f"chaos-{kind}")
                          for kind, d in definitions.items()}
        return user

    def start_all(self, user: User) -> None:
        kinds = self.rng.choices([k for k, _ in MIX], [w for _, w in MIX], k=self.args.workflows)
        interval = 1 / self.args.rate

        def start(i: int) -> None:
            with httpx.Client() as http:
                try:
                    job = start_job(http, self.stack, user, self.workflows[kinds[i]], {"n": i},
                                    key=f"chaos-{i}", deadline_s=120, retries=self.start_retries)
                except StartFailed as exc:
                    with self.lock:
                        self.violations.append(f"start {i} ({kinds[i]}) never succeeded: {exc}")
                    return
            with self.lock:
                self.jobs[job] = kinds[i]

        with ThreadPoolExecutor(self.args.clients) as pool:
            for i in range(len(kinds)):
                pool.submit(start, i)
                time.sleep(interval)
                if i % 200 == 199:
                    log(self.t0, f"{i + 1} starts submitted, {len(self.jobs)} jobs created")

    # Faults -----------------------------------------------------------------------------

    def inject_forever(self) -> None:
        while not self.stop.wait(self.rng.uniform(self.args.min_gap, self.args.max_gap)):
            kind = self.rng.choices([k for k, _ in FAULTS], [w for _, w in FAULTS])[0]
            started = time.monotonic()
            try:
                detail = self.inject(kind)
            except Exception as exc:  # noqa: BLE001 - a failed injection is reported, not fatal
                detail = f"injection failed: {exc!r}"
                self.findings.append(f"{kind}: {detail}")
            self.injections.append(Injection(started - self.t0, kind, detail))
            log(self.t0, f"injected {kind}: {detail}")
            self.heal()

    def heal(self) -> None:
        """Wait until the stack serves again; if it went down altogether, say so and restart it."""
        try:
            faults.wait_healthy(self.stack, timeout=45)
        except TimeoutError as exc:
            alive = supervisor.read_pid(self.stack.cfg.supervisor_pid)
            self.violations.append(f"the stack did not recover ({'supervisor alive' if alive else
                                   'the supervisor exited: the whole stack went down'}): {exc}")
            faults.ensure_stack_up(self.stack.cfg)
            faults.wait_healthy(self.stack, timeout=60)

    def inject(self, kind: str) -> str:
        cfg = self.stack.cfg
        if kind == "gateway-kill":
            pid = faults.kill_gateway(cfg)
            return f"pid {pid}, restarted in {faults.wait_restarted(cfg, 'gateway', pid):.1f} s"
        if kind == "postgrest-kill":
            pid = faults.kill_postgrest(cfg)
            return f"pid {pid}, restarted in {faults.wait_restarted(cfg, 'postgrest', pid):.1f} s"
        if kind == "postgres-restart":
            if self.args.pg_ctl_restart:
                postgres.restart(cfg)
                return "pg_ctl restart -m fast"
            faults.stop_postgres(cfg)
            return f"pg_ctl stop -m fast; the supervisor started it in {faults.wait_postgres(cfg):.1f} s"
        if kind == "orchestrator-kill":
            return self.kill_orchestrator()
        return self.deliver_again(stale=kind == "stale")

    def kill_orchestrator(self) -> str:
        with faults.dispatch_proxy(self.stack.api_url) as proxy:
            external = ExternalOrchestrator(self.stack.cfg, budget_s=60, passes=4, base_url=proxy.url)
            try:
                external.wait_ready(timeout=90)
                # A few jobs started over RPC (no kick), so these passes have something to dispatch.
                assert self.user is not None
                with httpx.Client() as http:
                    for _ in range(4):
                        job = start_job_quietly(http, self.stack, self.user, self.workflows["chain3"],
                                                {"n": -1})
                        with self.lock:
                            self.jobs[job] = "chain3"
                deadline = time.monotonic() + 8
                while len(proxy.dispatches()) < 2 and time.monotonic() < deadline:
                    time.sleep(0.05)
            finally:
                external.kill()
            held = proxy.dispatches()
            for i, dispatch in enumerate(held):
                proxy.decide(dispatch, "forward" if i % 2 == 0 else "drop")
            deadline = time.monotonic() + 30
            while not proxy.settled() and time.monotonic() < deadline:
                time.sleep(0.05)
        late, lost = (len(held) + 1) // 2, len(held) // 2
        return f"{len(held)} dispatches in flight: {late} delivered after its death, {lost} never"

    def running_step(self) -> tuple[str, str, int, str] | None:
        with self.lock:
            ids = list(self.jobs)
        rows = self.stack.sql(
            "select job_id::text, step_id, attempt, lease_token::text from workflow.job_steps"
            " where job_id = any(%s::uuid[]) and status = 'running' order by random() limit 1", (ids,))
        return (rows[0][0], rows[0][1], rows[0][2], rows[0][3]) if rows else None

    def deliver_again(self, *, stale: bool) -> str:
        step = None
        deadline = time.monotonic() + 5
        while step is None and time.monotonic() < deadline:
            step = self.running_step()
        if step is None:
            return "no running step to deliver"
        job_id, step_id, attempt, token = step
        route, payload = faults.step_payload(self.stack, job_id, step_id, token, attempt)
        where = f"{step_id} attempt {attempt} of job {job_id}"
        if stale:
            faults.expire_lease(self.stack, job_id, step_id)
            outcome = faults.deliver(self.stack, route, payload)["outcome"]
            self.outcomes[f"stale delivery -> {outcome}"] += 1
            if outcome != "stale":
                self.violations.append(f"an old lease token was accepted ({outcome}) for {where}")
            return f"{where}: lease expired and recovered; the old token got {outcome!r}"
        with ThreadPoolExecutor(2) as pool:
            calls = [pool.submit(faults.deliver, self.stack, route, payload) for _ in range(2)]
            answers = [str(call.result(90)["outcome"]) for call in calls]
        for outcome in answers:
            self.outcomes[f"duplicate delivery -> {outcome}"] += 1
        return f"{where}: delivered twice more with its token: {answers}"

    # Checks and report ------------------------------------------------------------------

    def check(self) -> Findings:
        ids = list(self.jobs)
        doomed = [j for j, k in self.jobs.items() if k == "doomed"]
        found = check_invariants(self.stack, ids, must_fail=doomed)
        for job_id, error in self.stack.sql(
                "select id::text, error_message from workflow.jobs where id = any(%s::uuid[])"
                " and status = 'failed'", (ids,)):
            if self.jobs[job_id] == "doomed":
                continue
            match = EXHAUSTED.search(error or "")
            if match is None or match.group(1) != match.group(2):
                found.violations.append(f"job {job_id} ({self.jobs[job_id]}) failed before its retries "
                                        f"were exhausted: {error}")
            else:
                self.findings.append(f"job {job_id} ({self.jobs[job_id]}) failed after exhausting its "
                                     f"retries: {error}")
        return found

    def report(self, found: Findings, settled: float | None, driver: Driver) -> int:
        print("\n=== chaos soak report ===")
        kinds = Counter(self.jobs.values())
        print(f"workflows started: {len(self.jobs)} ({dict(kinds)})")
        reasons = Counter(re.sub(r"[0-9a-f-]{36}|\d+", "#", r)[:90] for r in self.start_retries)
        print(f"start requests retried with their idempotency key (no answer, 5xx or 429): "
              f"{len(self.start_retries)} {dict(reasons.most_common(6))}")
        print(f"faults injected: {len(self.injections)} "
              f"({dict(Counter(i.kind for i in self.injections))})")
        for injection in self.injections:
            print(f"  {injection.at:7.1f}s {injection.kind:18} {injection.detail}")
        print(f"redeliveries: {dict(self.outcomes)}")
        print(f"orchestrator stand-in: {len(driver.passes())} passes, {driver.recovered()} leases recovered")
        print(f"found: {found.summary()}")
        print(f"events: {dict(found.events)}")
        print(f"all jobs terminal {settled:.1f} s after the last fault healed" if settled is not None
              else "NOT all jobs reached a terminal state in time")
        for line in self.findings[:30]:
            print(f"  note: {line}")
        violations = self.violations + found.violations
        if violations:
            print(f"\nINVARIANT VIOLATIONS ({len(violations)}):")
            for line in violations[:50]:
                print(f"  {line}")
        print(f"\nresult: {'FAIL' if violations or settled is None else 'OK'} "
              f"in {time.monotonic() - self.t0:.0f} s")
        if settled is None:
            return 2
        return 1 if violations else 0


def run(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    budget_end = time.monotonic() + args.minutes * 60
    print(f"chaos soak: {args.workflows} workflows, seed {args.seed}, at most {args.minutes} min", flush=True)
    with (own_stack(args.keep, args.function_concurrency) as stack, webhook_receiver() as receiver,
          Driver(stack) as driver):
        soak = Soak(stack, args, rng)
        log(soak.t0, f"stack up at {stack.api_url}")
        user = soak.setup(receiver)
        injector = threading.Thread(target=soak.inject_forever, daemon=True)
        injector.start()
        soak.start_all(user)
        log(soak.t0, f"all {len(soak.jobs)} jobs started; faults stop in {args.tail:.0f} s")
        soak.stop.wait(args.tail)
        soak.stop.set()
        injector.join(120)
        soak.heal()
        faults_stopped = time.monotonic()
        settled: float | None = None
        try:
            wait_terminal(stack, list(soak.jobs), max(30.0, budget_end - time.monotonic()))
            settled = time.monotonic() - faults_stopped
        except AssertionError as exc:
            print(str(exc)[:4000])
        found = soak.check()
        return soak.report(found, settled, driver)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflows", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=14.0, help="time budget, stack start included")
    parser.add_argument("--rate", type=float, default=6.0, help="starts per second")
    parser.add_argument("--clients", type=int, default=8, help="parallel API clients")
    parser.add_argument("--min-gap", type=float, default=4.0, help="seconds between faults, at least")
    parser.add_argument("--max-gap", type=float, default=12.0, help="seconds between faults, at most")
    parser.add_argument("--tail", type=float, default=20.0, help="seconds of faults after the last start")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--function-concurrency", type=int, default=16, help=(
        "concurrent invocations per function in the soak's gateway (SUPAFLOW_LOCAL_CONCURRENCY, "
        "64 by default there): all functions share one Python process locally, and fewer threads "
        "contending for its GIL get more done on a small machine"))
    parser.add_argument("--pg-ctl-restart", action="store_true",
                        help="restart Postgres with stack.postgres.restart (races the supervisor)")
    parser.add_argument("--keep", action="store_true", help="keep the stack's state folder")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
