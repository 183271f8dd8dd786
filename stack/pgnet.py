"""The local stack's pg_net worker: sends what `net.http_post` queued, after the queuing
transaction committed, and records each answer in `net._http_response`, as pg_net's
background worker does on hosted Supabase.

It waits on the `supaflow_net` notification (delivered at commit only, so a rolled-back
request never wakes it and is gone with its transaction) and looks at the queue every
second anyway. A request is taken off the queue when it is sent: at most once, like pg_net.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
from psycopg.types.json import Jsonb

from stack.config import StackConfig
from stack.postgres import database_url
from stack.secrets import load

log = logging.getLogger("pgnet")
BATCH = 50
IDLE_WAKE_S = 1.0
stopping = threading.Event()


def take(conn: psycopg.Connection[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Queued requests, oldest first, removed from the queue in the same statement."""
    with conn.transaction():
        return conn.execute(
            "delete from net.http_request_queue where id in (select id from"
            " net.http_request_queue order by id limit %s for update skip locked)"
            " returning id, method, url, headers, body, timeout_milliseconds", (BATCH,)).fetchall()


def send(http: httpx.Client, request: tuple[Any, ...]) -> tuple[Any, ...]:
    """One request's net._http_response row."""
    request_id, method, url, headers, body, timeout_ms = request
    try:
        answer = http.request(method, url, headers=headers or {}, content=bytes(body or b""),
                              timeout=timeout_ms / 1000)
        return (request_id, answer.status_code, answer.headers.get("content-type"),
                Jsonb(dict(answer.headers)), answer.text, False, None)
    except httpx.TimeoutException:
        return (request_id, None, None, None, None, True, "Timeout was reached")
    except httpx.HTTPError as exc:
        return (request_id, None, None, None, None, False, str(exc))


def serve(cfg: StackConfig) -> None:
    dsn = database_url(cfg, load(cfg.secrets_file))
    with psycopg.connect(dsn, autocommit=True) as listener, \
            psycopg.connect(dsn, autocommit=True) as conn, \
            httpx.Client() as http, ThreadPoolExecutor(16) as pool:
        listener.execute("listen supaflow_net")
        log.info("pgnet: sending what net.http_post queues")
        while not stopping.is_set():
            requests = take(conn)
            if requests:
                rows = list(pool.map(lambda r: send(http, r), requests))
                with conn.cursor() as cur:
                    cur.executemany(
                        "insert into net._http_response (id, status_code, content_type, headers,"
                        " content, timed_out, error_msg) values (%s, %s, %s, %s, %s, %s, %s)"
                        " on conflict (id) do nothing", rows)
                continue
            for _ in listener.notifies(timeout=IDLE_WAKE_S, stop_after=1):
                pass


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: stopping.set())
    while not stopping.is_set():
        try:
            serve(StackConfig.from_env())
        except psycopg.OperationalError as exc:  # Postgres restarting (the fault tests)
            log.warning("pgnet: database unavailable (%s); retrying", exc)
            stopping.wait(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
