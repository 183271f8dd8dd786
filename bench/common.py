"""What every benchmark shares: its own stack, a lean HTTP client, CPU accounting per
component, statistics and result files. Users, workflows and the stack handle come from
testkit, as the tests' do.

The benchmarks never touch the default stack (ports 54321-54325, `.stack/`): they run
on their own, in `.stack-bench/` on ports 55421-55425, started here when it is not
running and stopped again by whoever started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stack import supervisor
from stack.config import REPO, StackConfig
from stack.secrets import load
from testkit.stack import Stack, User, is_up, stack_cli, unlimited_starts
from testkit.workflows import chain, create_workflow

BENCH_DIR = REPO / "bench"
RESULTS_DIR = BENCH_DIR / "results"

# The bench stack: never the default one (54321-54325, .stack/) another engineer may be using.
BENCH_ENV: dict[str, str] = {
    "SUPAFLOW_STATE_DIR": str(REPO / ".stack-bench"),
    "SUPAFLOW_API_PORT": "55421",
    "SUPAFLOW_DB_PORT": "55422",
    "SUPAFLOW_REST_PORT": "55423",
    "SUPAFLOW_S3_PORT": "55424",
    "SUPAFLOW_GEMINI_PORT": "55425",
}
HOST = "127.0.0.1"


def bench_config() -> StackConfig:
    return StackConfig(
        state_dir=Path(BENCH_ENV["SUPAFLOW_STATE_DIR"]),
        api_port=int(BENCH_ENV["SUPAFLOW_API_PORT"]),
        db_port=int(BENCH_ENV["SUPAFLOW_DB_PORT"]),
        rest_port=int(BENCH_ENV["SUPAFLOW_REST_PORT"]),
        s3_port=int(BENCH_ENV["SUPAFLOW_S3_PORT"]),
        gemini_port=int(BENCH_ENV["SUPAFLOW_GEMINI_PORT"]),
    )


def bench_stack_cli(command: str) -> subprocess.CompletedProcess[str]:
    """`python -m stack <command>` on the bench stack's state dir and ports."""
    return stack_cli(command, env={**os.environ, **BENCH_ENV}, timeout=300)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# The stack ----------------------------------------------------------------------------

@dataclass
class BenchStack(Stack):
    """testkit's handle on a stack (keys, SQL, tokens, users), plus what benchmarks need."""

    started_here: bool = False

    def create_users(self, n: int) -> list[User]:
        """Users without a start rate limit: load generators start far more than 600/min."""
        users = [self.create_user() for _ in range(n)]
        for user in users:
            unlimited_starts(self, user)
        return users

    def pid_of(self, child: str) -> int | None:
        return supervisor.read_pid(self.cfg.state_dir / "pids" / f"{child}.pid")

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.cfg.pgdata / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def set_cron(self, active: bool) -> None:
        """The pg_cron safety net kicks an orchestrator every minute; some benchmarks
        need to be the only orchestrator, so they pause it on the bench stack."""
        self.sql("update cron.job set active = %s where jobname = 'supaflow-orchestrator'", (active,))


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # so that `finally` blocks stop what we started


@contextlib.contextmanager
def bench_stack(fresh: bool = False) -> Iterator[BenchStack]:
    """The bench stack: reused when up, else started here and stopped on exit.

    `fresh` starts from a new database cluster: migrations are applied once per cluster,
    so one edited in place reaches only a new one (the generated keys are kept).
    """
    signal.signal(signal.SIGTERM, _terminate)
    cfg = bench_config()
    started = False
    if is_up(cfg):
        log(f"reusing the running bench stack ({cfg.api_url}); its schema is as migrated when "
            "its cluster was created")
    else:
        if fresh:
            for path in (cfg.pgdata, cfg.pg_socket_dir, cfg.logs):
                shutil.rmtree(path, ignore_errors=True)
        log(f"starting the bench stack ({cfg.api_url}, state in {cfg.state_dir}"
            f"{', new cluster' if fresh else ''})")
        code = code_version()
        result = bench_stack_cli("up")
        if result.returncode != 0:
            raise SystemExit(f"bench stack failed to start:\n{result.stdout}\n{result.stderr}")
        (cfg.state_dir / "stack-code.json").write_text(json.dumps(code))
        started = True
    try:
        yield BenchStack(cfg, load(cfg.secrets_file), started_here=started)
    finally:
        if started:
            log("stopping the bench stack")
            bench_stack_cli("down")


def rest_headers(stack: BenchStack) -> dict[str, str]:
    """PostgREST as the service role, in the workflow schema (what the engine sends)."""
    return {**stack.service_headers(), "Accept-Profile": "workflow", "Content-Profile": "workflow"}


def settle(stack: BenchStack, max_wait_s: float = 20.0, idle_cores: float = 0.1) -> float:
    """Wait until the gateway is idle (orchestrator passes run on after the work is
    done), so one run does not pay for the previous one. Returns the seconds waited."""
    pid = stack.pid_of("gateway")
    started = time.monotonic()
    if not pid:
        return 0.0
    while time.monotonic() - started < max_wait_s:
        before = proc_cpu(pid)
        time.sleep(1.0)
        if proc_cpu(pid) - before < idle_cores:
            break
    return round(time.monotonic() - started, 1)


def cancel_open_jobs(stack: BenchStack, job_ids: Sequence[str]) -> int:
    """Stop what a time-capped run left behind, so it does not load the next run."""
    with stack.db() as conn:
        # The engine's lock order: the job rows first, then their steps.
        conn.execute("select id from workflow.jobs where id = any(%s::uuid[]) order by id for update",
                     (list(job_ids),))
        conn.execute(
            "update workflow.job_steps set status = 'cancelled', lease_token = null,"
            " lease_expires_at = null where job_id = any(%s::uuid[])"
            " and status in ('waiting', 'ready', 'running')", (list(job_ids),))
        cur = conn.execute(
            "update workflow.jobs set status = 'cancelled', completed_at = now()"
            " where id = any(%s::uuid[]) and status not in ('completed', 'failed', 'cancelled')",
            (list(job_ids),))
        return cur.rowcount


def enable_function_stats(stack: BenchStack) -> None:
    """Count calls per SQL function (pg_stat_user_functions) on the bench cluster only."""
    with stack.db() as conn:
        conn.execute("alter system set track_functions = 'all'")
        conn.execute("select pg_reload_conf()")


def function_calls(stack: BenchStack, settle_s: float = 12.0) -> dict[str, int]:
    """Calls per function of the workflow schema, and the row versions written to its
    job tables (`rows written: jobs` counts inserts and updates: each is a new version
    of a row). Backends flush their counts within about 10 s of going idle, so this
    waits until two reads a second apart agree."""
    query = ("select funcname, calls from pg_stat_user_functions where schemaname = 'workflow'"
             " union all select 'rows written: ' || relname, n_tup_ins + n_tup_upd"
             " from pg_stat_user_tables where schemaname = 'workflow'"
             " and relname in ('jobs', 'job_steps', 'job_events')")
    deadline = time.monotonic() + settle_s
    last: dict[str, int] = {}
    with stack.db() as conn:
        while True:
            now = {str(r[0]): int(r[1]) for r in conn.execute(query).fetchall()}
            if now == last or time.monotonic() > deadline:
                return now
            last = now
            time.sleep(1.0)


def calls_delta(before: dict[str, int], after: dict[str, int], per: float) -> dict[str, float]:
    """Calls per unit of work, most frequent first."""
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    return {k: round(v / per, 2) for k, v in sorted(delta.items(), key=lambda kv: -kv[1]) if v > 0}


def cancel_all_open(stack: BenchStack) -> int:
    """Cancel every unfinished job of the bench stack: a benchmark that must be the only
    source of work starts from an empty runnable set."""
    with stack.db() as conn:
        conn.execute("update workflow.job_steps set status = 'cancelled', lease_token = null,"
                     " lease_expires_at = null where status in ('waiting', 'ready', 'running')")
        cur = conn.execute("update workflow.jobs set status = 'cancelled', completed_at = now()"
                           " where status not in ('completed', 'failed', 'cancelled')")
        return cur.rowcount


# Workflows --------------------------------------------------------------------------

def ensure_chain_workflow(stack: BenchStack, n_steps: int) -> str:
    """The n-step no-op chain under a fixed id, replaced in place: runs and benchmarks share it."""
    return create_workflow(stack, chain(n_steps), workflow_id=f"bench-transform-{n_steps}",
                           description=f"benchmark: {n_steps} no-op transform step(s)")


# A lean HTTP/1.1 client ---------------------------------------------------------------

class HttpError(Exception):
    pass


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.close()


class RawHttp:
    """Keep-alive HTTP/1.1 over asyncio streams, a pool of up to `size` connections.

    The load generator shares the machine with what it measures; httpx costs several
    times more CPU per request than this, which would be taken from the system under test.
    """

    def __init__(self, host: str, port: int, size: int) -> None:
        self.host = host
        self.port = port
        self.size = size
        self._idle: list[_Conn] = []
        self._sem = asyncio.Semaphore(size)

    async def _connect(self) -> _Conn:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return _Conn(reader, writer)

    async def request(self, method: str, path: str, body: bytes | None = None,
                      headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        async with self._sem:
            for attempt in (1, 2):
                conn = self._idle.pop() if self._idle else await self._connect()
                try:
                    status, data, keep = await self._roundtrip(conn, method, path, body, headers or {})
                except (ConnectionError, asyncio.IncompleteReadError, HttpError):
                    conn.close()
                    if attempt == 2:
                        raise
                    continue  # a keep-alive connection the server had closed: once more
                if keep:
                    self._idle.append(conn)
                else:
                    conn.close()
                return status, data
        raise AssertionError("unreachable")

    async def _roundtrip(self, conn: _Conn, method: str, path: str, body: bytes | None,
                         headers: dict[str, str]) -> tuple[int, bytes, bool]:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        conn.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
        await conn.writer.drain()
        status_line = await conn.reader.readline()
        if not status_line:
            raise HttpError("connection closed")
        status = int(status_line.split()[1])
        resp: dict[str, str] = {}
        while True:
            line = await conn.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            key, _, value = line.decode("latin-1").partition(":")
            resp[key.strip().lower()] = value.strip()
        if "content-length" in resp:
            data = await conn.reader.readexactly(int(resp["content-length"]))
        elif resp.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await conn.reader.readline()).split(b";")[0], 16)
                if size == 0:
                    await conn.reader.readline()
                    break
                parts.append(await conn.reader.readexactly(size))
                await conn.reader.readline()
            data = b"".join(parts)
        elif status in (204, 304) or method == "HEAD":
            data = b""
        else:
            data = await conn.reader.read()
            return status, data, False
        return status, data, resp.get("connection", "").lower() != "close"

    async def post_json(self, path: str, payload: Any,
                        headers: dict[str, str] | None = None) -> tuple[int, Any]:
        status, data = await self.request(
            "POST", path, json.dumps(payload).encode(),
            {"Content-Type": "application/json", **(headers or {})})
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            return status, data.decode(errors="replace")

    async def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


# CPU accounting -------------------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int, children: bool = False) -> float:
    """CPU seconds of a process (and, optionally, of its waited-for children)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + ((cutime + cstime) if children else 0)) / TICK


def children_of(ppid: int) -> list[int]:
    try:
        raw = Path(f"/proc/{ppid}/task/{ppid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in raw.split()]


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process, its waited-for children and its live descendants."""
    return proc_cpu(pid, children=True) + sum(tree_cpu(c) for c in children_of(pid))


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    values = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(values[:8])
    idle = values[3] + values[4]
    return (total - idle) / TICK, total / TICK


class ProcessMeter:
    """CPU seconds of named parts between start() and stop(); `other` is what the rest
    of the machine used. A subclass says what the parts are (`parts`, `_sample`)."""

    parts: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._start: dict[str, float] = {}
        self.used: dict[str, float] = {}
        self.wall_s = 0.0
        self._t0 = 0.0

    def _sample(self) -> dict[str, float]:
        """CPU seconds so far of each part, and `machine_busy`."""
        raise NotImplementedError

    def start(self) -> None:
        self._start = self._sample()
        self._t0 = time.monotonic()

    def stop(self) -> dict[str, float]:
        end = self._sample()
        self.wall_s = time.monotonic() - self._t0
        self.used = {k: end[k] - self._start.get(k, 0.0) for k in end}
        parts = sum(self.used[k] for k in self.parts)
        self.used["other"] = max(0.0, self.used["machine_busy"] - parts)
        return self.used

    def report(self, per: float | None = None, unit: str = "step") -> dict[str, Any]:
        """Cores used by each part, and CPU ms per unit of work when `per` is given."""
        wall = max(self.wall_s, 1e-9)
        keys = (*self.parts, "other")
        out: dict[str, Any] = {
            "wall_s": round(self.wall_s, 3),
            "cores_busy": {k: round(self.used[k] / wall, 2) for k in (*keys, "machine_busy")},
        }
        if per:
            out[f"cpu_ms_per_{unit}"] = {k: round(self.used[k] * 1000 / per, 3) for k in keys}
        return out


class CpuMeter(ProcessMeter):
    """Each part of the bench stack. postgres counts the postmaster, its live backends
    and the ones that exited (the postmaster's children time)."""

    parts = ("gateway", "postgrest", "postgres", "bench_client")

    def __init__(self, stack: BenchStack) -> None:
        super().__init__()
        self.stack = stack

    def _sample(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name in ("gateway", "postgrest"):
            pid = self.stack.pid_of(name)
            # The gateway's worker processes are its children (SUPAFLOW_GATEWAY_WORKERS).
            out[name] = proc_cpu(pid) + sum(proc_cpu(c) for c in children_of(pid)) if pid else 0.0
        pm = self.stack.postmaster_pid()
        if pm:
            out["postgres"] = proc_cpu(pm, children=True) + sum(proc_cpu(c) for c in children_of(pm))
        # This process and the children it has waited for (memory.py's orchestrator).
        out["bench_client"] = proc_cpu(os.getpid(), children=True)
        busy, total = machine_cpu()
        out["machine_busy"] = busy
        out["machine_total"] = total
        return out


# Statistics and results ------------------------------------------------------------------

def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary_ms(values_s: Sequence[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {"n": len(ms), "p50_ms": round(percentile(ms, 50), 2),
            "p95_ms": round(percentile(ms, 95), 2), "p99_ms": round(percentile(ms, 99), 2),
            "max_ms": round(max(ms), 2) if ms else math.nan}


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def median_of_runs(runs: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, float]:
    return {k: round(median([float(r[k]) for r in runs]), 2) for k in keys}


def machine() -> dict[str, Any]:
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    stack_code = bench_config().state_dir / "stack-code.json"
    payload = {
        "benchmark": name, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        # The code under test: the gateway loads the functions once, when the stack starts;
        # processes of this benchmark (its orchestrator, cold starts) load them as they run.
        "code": {"stack_started_with": json.loads(stack_code.read_text()) if stack_code.exists()
                 else None, "benchmark_started_with": CODE_AT_START, "at_end": code_version()},
        **data,
    }
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    log(f"results written to {path.relative_to(REPO)}")
    return path


def code_version() -> dict[str, Any]:
    """What was measured: the commit, and the uncommitted changes under test, if any."""
    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return result.stdout.strip()

    paths = ["shared", "functions", "stack", "supabase", "template.yaml", "pyproject.toml"]
    diff = git("diff", "HEAD", "--", *paths)
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted_files": git("status", "--short", "--", *paths).splitlines(),
        "uncommitted_diff_sha256": hashlib.sha256(diff.encode()).hexdigest()[:12] if diff else None,
    }


CODE_AT_START = code_version()
