"""`python -m stack up|down|dev|env|status`: the local stack's command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from stack import postgres, supervisor
from stack.config import REPO, StackConfig
from stack.environment import client_environment
from stack.secrets import load


def up(cfg: StackConfig) -> int:
    if supervisor.read_pid(cfg.supervisor_pid) and (cfg.state_dir / "ready").exists():
        print(f"stack already running: API {cfg.api_url}")
        return 0
    for name, port in cfg.ports().items():
        supervisor.check_port_free(cfg.host, port, name)
    cfg.logs.mkdir(parents=True, exist_ok=True)
    log_path = cfg.logs / "stack.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stack", "dev"], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, cwd=REPO,
        )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if (cfg.state_dir / "ready").exists():
            print(f"stack ready: API {cfg.api_url}, Postgres {cfg.host}:{cfg.db_port}, "
                  f"S3 {cfg.s3_url} (logs in {cfg.logs})")
            return 0
        if proc.poll() is not None:
            print(f"the stack failed to start; last lines of {log_path}:", file=sys.stderr)
            print(log_path.read_text()[-3000:], file=sys.stderr)
            return 1
        time.sleep(0.2)
    print("the stack did not become ready within 180 s", file=sys.stderr)
    return 1


def down(cfg: StackConfig) -> int:
    pid = supervisor.read_pid(cfg.supervisor_pid)
    if pid:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and supervisor.read_pid(cfg.supervisor_pid):
            time.sleep(0.1)
    # Whatever a killed supervisor left behind.
    for pidfile in (cfg.state_dir / "pids").glob("*.pid") if (cfg.state_dir / "pids").exists() else []:
        child = supervisor.read_pid(pidfile)
        if child:
            os.kill(child, signal.SIGTERM)
        pidfile.unlink(missing_ok=True)
    postgres.stop(cfg)
    busy = [f"{name}={port}" for name, port in cfg.ports().items()
            if supervisor.port_in_use(cfg.host, port)]
    if busy:
        print(f"stopped, but these ports are still bound: {', '.join(busy)}", file=sys.stderr)
        return 1
    print("stack stopped")
    return 0


def main(argv: list[str]) -> int:
    cfg = StackConfig.from_env()
    command = argv[0] if argv else "status"
    if command == "up":
        return up(cfg)
    if command == "down":
        return down(cfg)
    if command == "dev":
        try:
            supervisor.supervise(cfg)
        except SystemExit as exc:
            print(exc, file=sys.stderr)
            return 1
        return 0
    if command == "env":
        for key, value in client_environment(cfg, load(cfg.secrets_file)).items():
            print(f"{key}={value}")
        return 0
    if command == "status":
        running = bool(supervisor.read_pid(cfg.supervisor_pid))
        print("running" if running else "stopped")
        return 0 if running else 3
    print("usage: python -m stack up|down|dev|env|status", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
