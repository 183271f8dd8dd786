"""A webhook server on 127.0.0.1 that is slow on purpose, or holds deliveries until told
to let them go, so a step is reliably "mid-step" when a fault hits. Workflows reach it
through webhook-call transformers (testkit.workflows.webhook_transformer).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Delivery:
    serial: int
    job_id: str
    step_id: str
    attempt: int
    path: str
    tag: str  # the body's "tag", if any
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


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
                path, tag, body, headers)
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
            if path.startswith("/status/"):  # answers with that status
                return int(path.rsplit("/", 1)[1]), {"serial": delivery.serial}
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
def webhook_receiver() -> Iterator[Receiver]:
    """A started Receiver, closed (its held deliveries let go) on exit."""
    rec = start_receiver()
    try:
        yield rec
    finally:
        rec.close()
