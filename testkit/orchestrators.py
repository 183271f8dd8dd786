"""Orchestrator passes in processes of their own.

- `Driver`: runs orchestrator passes back to back, standing in for pg_cron's one-minute
  tick so that recovery is observed in seconds.
- `ExternalOrchestrator`: passes that can be SIGKILLed apart from the executors.

`python -m testkit.orchestrators orchestrate BUDGET_S PASSES BASE_URL` is the external
orchestrator's process; `python -m testkit.orchestrators drive ...` is the Driver's. Both
find their stack through the usual SUPAFLOW_* variables.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

from stack.config import REPO, StackConfig
from stack.supervisor import stop_process
from testkit.stack import Stack, stack_env


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
            stop_process(self.proc)


def _spawn(cfg: StackConfig, args: list[str], log_path: Any) -> subprocess.Popen[bytes]:
    """`python -m testkit.orchestrators ARGS` against the stack `cfg`, logging to `log_path`."""
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "testkit.orchestrators", *args], cwd=REPO,
                                env=stack_env(cfg), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


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


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "orchestrate":
        sys.exit(_orchestrate_main(float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
    if len(sys.argv) == 5 and sys.argv[1] == "drive":
        sys.exit(_drive_main(float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]))
    print("usage: python -m testkit.orchestrators orchestrate BUDGET_S PASSES BASE_URL\n"
          "       python -m testkit.orchestrators drive BUDGET_S PAUSE_S SUMMARIES_FILE",
          file=sys.stderr)
    sys.exit(2)
