"""Starts the stack's processes, restarts any that die, and stops them all on a signal."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from stack import postgres
from stack.config import REPO, StackConfig
from stack.examples import load_examples
from stack.secrets import StackSecrets, load_or_create


class PortTaken(SystemExit):
    pass


# The stack's ports lie inside Linux's ephemeral range (32768-60999), so a short-lived
# outgoing connection can hold one for a moment: wait that out before giving up.
PORT_WAIT_S = 10.0


def check_port_free(host: str, port: int, env_name: str, wait_s: float = PORT_WAIT_S) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
                return
            except OSError:
                if time.monotonic() >= deadline or port_in_use(host, port):
                    raise PortTaken(
                        f"port {port} on {host} is taken by another process; "
                        f"stop it or choose another port with {env_name}=<port>"
                    ) from None
        time.sleep(0.2)


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 10 s; reaped either way."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@dataclass
class Child:
    """A long-running process of the stack and how to tell it is serving."""

    name: str
    argv: list[str]
    ready_url: str | None  # None: serving once started (a worker with no HTTP side)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, cfg: StackConfig) -> None:
        log: IO[bytes] = (cfg.logs / f"{self.name}.log").open("ab")
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env}, cwd=REPO,
        )
        log.close()
        (cfg.state_dir / "pids").mkdir(exist_ok=True)
        (cfg.state_dir / "pids" / f"{self.name}.pid").write_text(str(self.proc.pid))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, cfg: StackConfig) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        (cfg.state_dir / "pids" / f"{self.name}.pid").unlink(missing_ok=True)


def children(cfg: StackConfig, sec: StackSecrets) -> list[Child]:
    if not cfg.postgrest_bin.exists():
        raise SystemExit(f"PostgREST is not installed at {cfg.postgrest_bin}: run `make setup`")
    stack_env = {"SUPAFLOW_STATE_DIR": str(cfg.state_dir), **{k: str(v) for k, v in cfg.ports().items()}}
    postgrest_env = {
        "PGRST_DB_URI": (
            f"postgres://authenticator:{sec.authenticator_password}@{cfg.host}:{cfg.db_port}/postgres"
        ),
        "PGRST_DB_SCHEMAS": "workflow",
        "PGRST_DB_ANON_ROLE": "anon",
        "PGRST_DB_EXTRA_SEARCH_PATH": "public",
        "PGRST_DB_POOL": "20",
        "PGRST_DB_CHANNEL_ENABLED": "true",
        "PGRST_JWT_SECRET": json.dumps(sec.postgrest_jwks()),
        "PGRST_SERVER_HOST": cfg.host,
        "PGRST_SERVER_PORT": str(cfg.rest_port),
        "PGRST_LOG_LEVEL": "warn",
    }
    return [
        Child("postgrest", [str(cfg.postgrest_bin)], f"{cfg.rest_url}/", postgrest_env),
        Child(
            "s3",
            [sys.executable, "-m", "moto.server", "-H", cfg.host, "-p", str(cfg.s3_port)],
            f"{cfg.s3_url}/",
        ),
        Child(
            "gemini",
            [sys.executable, "-m", "stack.fake_gemini", "--port", str(cfg.gemini_port)],
            f"{cfg.gemini_url}/_control/requests",
        ),
        Child("gateway", [sys.executable, "-m", "stack.gateway"], f"{cfg.api_url}/_gateway/health",
              stack_env),
        Child("pgnet", [sys.executable, "-m", "stack.pgnet"], None, stack_env),
    ]


def _wait_ready(child: Child, deadline: float) -> None:
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited during start; see its log in .stack/logs/")
        if child.ready_url is None:
            return
        try:
            if httpx.get(child.ready_url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{child.name} was not ready in time")


RESERVED_PORTS = Path("/proc/sys/net/ipv4/ip_local_reserved_ports")


def reserve_ports(ports: list[int]) -> None:
    """Keep the kernel from handing the stack's ports out as the source ports of outgoing
    connections (they lie in Linux's ephemeral range, 32768-60999): a connection to
    PostgREST that happened to leave from 54324 kept the S3 server from starting. Needs
    root; elsewhere the stack does without (a clash stays rare)."""
    try:
        current = RESERVED_PORTS.read_text().strip()
        wanted = ",".join(filter(None, [current, *map(str, ports)]))
        if os.geteuid() == 0 and wanted != current:
            RESERVED_PORTS.write_text(wanted)
    except OSError:
        pass


def supervise(cfg: StackConfig) -> None:
    """Run the stack in the foreground until SIGINT or SIGTERM."""
    reserve_ports(list(cfg.ports().values()))
    for name, port in cfg.ports().items():
        if name != "SUPAFLOW_DB_PORT" or not postgres.is_running(cfg):
            check_port_free(cfg.host, port, name)
    cfg.logs.mkdir(parents=True, exist_ok=True)
    sec = load_or_create(cfg.secrets_file)
    cfg.supervisor_pid.write_text(str(os.getpid()))
    ready_flag = cfg.state_dir / "ready"
    ready_flag.unlink(missing_ok=True)
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    procs: list[Child] = []
    try:
        created = postgres.init_cluster(cfg, sec)
        postgres.start(cfg)
        applied = postgres.bootstrap(cfg, sec)
        print(f"postgres ready on {cfg.host}:{cfg.db_port}"
              f"{' (new cluster)' if created else ''}; migrations applied: {applied or 'none'}",
              flush=True)
        procs = children(cfg, sec)
        deadline = time.monotonic() + 90
        for child in procs:
            child.start(cfg)
        for child in procs:
            _wait_ready(child, deadline)
        print(f"examples published: {load_examples(cfg.api_url, sec.service_role_key)}", flush=True)
        ready_flag.write_text(str(time.time()))
        print(f"stack ready: API {cfg.api_url}", flush=True)
        last_pg_check = time.monotonic()
        while not stopping:
            time.sleep(0.25)
            for child in procs:
                if not stopping and not child.alive():
                    print(f"{child.name} exited; restarting it", flush=True)
                    child.start(cfg)
            if time.monotonic() - last_pg_check > 2 and not stopping:
                last_pg_check = time.monotonic()
                if not _postmaster_alive(cfg):
                    print("postgres is down; starting it", flush=True)
                    try:
                        postgres.start(cfg)
                    except RuntimeError as exc:
                        # Someone else may be restarting it (pg_ctl restart); retry next tick.
                        print(f"postgres did not start ({exc}); retrying", flush=True)
    finally:
        ready_flag.unlink(missing_ok=True)
        for child in reversed(procs):
            child.stop(cfg)
        postgres.stop(cfg)
        cfg.supervisor_pid.unlink(missing_ok=True)
        print("stack stopped", flush=True)


def _postmaster_alive(cfg: StackConfig) -> bool:
    pidfile = cfg.pgdata / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().splitlines()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return False
    return True


def read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid
