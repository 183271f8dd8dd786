"""Scale: the cost of an idle orchestrator pass and of claiming a batch, against history.

With 0, 100,000 and 1,000,000 finished steps in `workflow.job_steps` (3-step jobs,
completed, generated with SQL), measured on an otherwise idle bench stack (pg_cron
paused, no other work):

- claiming a batch: 16 steps made ready (16 one-step jobs, as start_job makes them),
  then `claim_steps(16)`, timed in Postgres (psycopg, one round trip) and over HTTP
  straight to PostgREST; the claimed steps are then marked completed;
- an idle pass: the RPCs one orchestrator pass makes when there is no work
  (recover_expired_leases, finishable_jobs, claim_steps, next_due_in), each timed in
  Postgres, and together over HTTP; and one whole `run_pass` in this process (through
  the gateway, as the functions call PostgREST) with a 1 s budget;
- the plans: auto_explain's plans of the statements inside those functions, to show
  which index each uses.

The benchmark owns the bench stack's data: it empties the job tables first and
again at the end (unless --keep-history).

    python -m bench.scale [--levels 0 100000 1000000] [--reps 40]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

import psycopg

from bench.common import (
    HOST,
    BenchStack,
    RawHttp,
    bench_stack,
    ensure_chain_workflow,
    log,
    median,
    rest_headers,
    settle,
    write_result,
)
from bench.memory import seed_ready_steps

BATCH = 16
HISTORY_CHUNK = 100_000  # steps per INSERT

IDLE_RPCS: dict[str, tuple[str, dict[str, Any]]] = {
    "recover_expired_leases": ("select workflow.recover_expired_leases(100)", {"p_limit": 100}),
    "finishable_jobs": ("select * from workflow.finishable_jobs(50, null)",
                        {"p_limit": 50, "p_job_id": None}),
    "claim_steps": ("select * from workflow.claim_steps(16)", {"p_limit": BATCH}),
    "next_due_in": ("select workflow.next_due_in()", {}),
}


def empty_job_tables(stack: BenchStack) -> None:
    stack.sql("truncate workflow.job_events, workflow.job_steps, workflow.jobs")
    stack.sql("vacuum analyze workflow.jobs")
    stack.sql("vacuum analyze workflow.job_steps")


def finished_steps(stack: BenchStack) -> int:
    return int(stack.sql("select count(*) from workflow.job_steps where status = 'completed'")[0][0])


def add_history(stack: BenchStack, user_id: str, workflow_id: str, steps: int) -> None:
    """Completed 3-step jobs, with outputs and timings, spread over the past days."""
    with stack.db() as conn:
        while steps > 0:
            jobs = max(1, min(steps, HISTORY_CHUNK) // 3)
            conn.execute(
                """
                with j as (
                  insert into workflow.jobs (user_id, workflow_id, workflow_version, status,
                    input_data, step_data, final_result, created_at, started_at, completed_at,
                    last_updated_at, state_history)
                  select %(u)s, %(wf)s, v.version, 'completed', jsonb_build_object('n', g),
                         jsonb_build_object('s1', jsonb_build_object('n', g),
                                            's2', jsonb_build_object('n', g),
                                            's3', jsonb_build_object('n', g)),
                         jsonb_build_object('n', g), t, t, t + interval '50 ms',
                         t + interval '50 ms', '[]'::jsonb
                  from generate_series(1, %(n)s) g,
                       (select max(version) as version from workflow.workflow_versions
                        where workflow_id = %(wf)s) v,
                       lateral (select now() - interval '3 days' * random() as t) x
                  returning id, created_at, input_data
                )
                insert into workflow.job_steps (job_id, step_id, transformer_id, depends_on,
                  definition, status, attempt, max_attempts, next_attempt_at, output,
                  created_at, started_at, completed_at, updated_at)
                select j.id, 's' || k, 'transform',
                       case when k = 1 then '{}'::text[] else array['s' || (k - 1)] end,
                       jsonb_build_object('id', 's' || k, 'transformer', 'transform',
                                          'inputs', jsonb_build_object('n', '$.input.n'),
                                          'retry', '{}'::jsonb),
                       'completed', 1, 4, j.created_at, j.input_data, j.created_at,
                       j.created_at + interval '10 ms' * k, j.created_at + interval '10 ms' * k,
                       j.created_at + interval '10 ms' * k
                from j, generate_series(1, 3) k
                """, {"u": user_id, "wf": workflow_id, "n": jobs})
            steps -= jobs * 3
        conn.execute("vacuum analyze workflow.jobs")
        conn.execute("vacuum analyze workflow.job_steps")


def timed_sql(conn: psycopg.Connection[tuple[Any, ...]], query: str) -> tuple[float, int]:
    t = time.perf_counter()
    rows = conn.execute(query.encode()).fetchall()
    return time.perf_counter() - t, len(rows)


def complete_claimed(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
    """Finish what a measurement claimed, so the runnable set is empty again."""
    conn.execute("update workflow.job_steps set status = 'completed', completed_at = now(),"
                 " lease_token = null, lease_expires_at = null where status in ('running', 'ready')")
    conn.execute("update workflow.jobs set status = 'completed', completed_at = now()"
                 " where status not in ('completed', 'failed', 'cancelled')")


def measure_claim(stack: BenchStack, workflow_id: str, user_id: str, reps: int) -> dict[str, Any]:
    sql_times: list[float] = []
    http_times: list[float] = []
    claimed: list[int] = []

    async def over_http() -> tuple[float, int]:
        http = RawHttp(HOST, stack.cfg.rest_port, 1)
        await http.post_json("/rpc/next_due_in", {}, rest_headers(stack))  # connect first
        t = time.perf_counter()
        status, body = await http.post_json("/rpc/claim_steps", {"p_limit": BATCH},
                                            rest_headers(stack))
        elapsed = time.perf_counter() - t
        await http.close()
        if status != 200 or not isinstance(body, list):
            raise RuntimeError(f"claim_steps over HTTP: {status} {body}")
        return elapsed, len(body)

    with stack.db() as conn:
        for i in range(reps):
            seed_ready_steps(stack, workflow_id, BATCH, user_id, analyze=False)
            if i % 2 == 0:
                elapsed, n = timed_sql(conn, "select * from workflow.claim_steps(16)")
                sql_times.append(elapsed)
            else:
                elapsed, n = asyncio.run(over_http())
                http_times.append(elapsed)
            claimed.append(n)
            complete_claimed(conn)
    return {"sql_ms_median": round(median(sql_times) * 1000, 3),
            "http_ms_median": round(median(http_times) * 1000, 3),
            "sql_ms_min": round(min(sql_times) * 1000, 3),
            "steps_claimed_per_call": median([float(c) for c in claimed])}


def measure_idle_rpcs(stack: BenchStack, reps: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with stack.db() as conn:
        for name, (query, _) in IDLE_RPCS.items():
            times = [timed_sql(conn, query)[0] for _ in range(reps)]
            out[f"{name}_sql_ms_median"] = round(median(times) * 1000, 3)

    async def idle_pass_over_http() -> list[float]:
        http = RawHttp(HOST, stack.cfg.rest_port, 1)
        headers = rest_headers(stack)
        await http.post_json("/rpc/next_due_in", {}, headers)
        totals = []
        for _ in range(reps):
            t = time.perf_counter()
            for name, (_, params) in IDLE_RPCS.items():
                status, _body = await http.post_json(f"/rpc/{name}", params, headers)
                if status != 200:
                    raise RuntimeError(f"{name}: HTTP {status}")
            totals.append(time.perf_counter() - t)
        await http.close()
        return totals

    totals = asyncio.run(idle_pass_over_http())
    out["idle_pass_rpcs_http_ms_median"] = round(median(totals) * 1000, 3)
    out["idle_pass_rpcs_sql_ms_total"] = round(sum(
        v for k, v in out.items() if k.endswith("_sql_ms_median")), 3)
    return out


def whole_idle_pass(stack: BenchStack, budget_s: float, reps: int) -> dict[str, Any]:
    """run_pass with no work, in this process; counts the claims it makes."""
    os.environ.update(stack.env())
    from shared import orchestrator, state

    calls: dict[str, int] = {"claim": 0, "next_due_in": 0}
    real_claim, real_next_due = state.claim_steps_async, state.next_due_in_async

    async def counting_claim(client: Any, limit: int, pass_id: str | None = None,
                             alive_s: float = 0) -> list[state.ClaimedStep]:
        calls["claim"] += 1
        return await real_claim(client, limit, pass_id, alive_s)

    async def counting_next_due(client: Any) -> float | None:
        calls["next_due_in"] += 1
        return await real_next_due(client)

    state.claim_steps_async = counting_claim
    state.next_due_in_async = counting_next_due
    walls = []
    try:
        for _ in range(reps):
            t = time.perf_counter()
            asyncio.run(orchestrator.run_pass(stack.api_url, budget_s))
            walls.append(time.perf_counter() - t)
    finally:
        state.claim_steps_async, state.next_due_in_async = real_claim, real_next_due
    return {"budget_s": budget_s, "wall_ms_median": round(median(walls) * 1000, 1),
            "claim_calls_per_pass": calls["claim"] / reps,
            "next_due_in_calls_per_pass": calls["next_due_in"] / reps,
            "next_due_in_with_no_work": stack.sql("select workflow.next_due_in()")[0][0]}


def plans(stack: BenchStack, workflow_id: str, user_id: str) -> dict[str, list[str]]:
    """auto_explain's plans of every statement run inside each RPC (rolled back)."""
    seed_ready_steps(stack, workflow_id, BATCH, user_id, analyze=False)
    found: dict[str, list[str]] = {}
    with psycopg.connect(stack.database_url) as conn:
        notices: list[str] = []
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        for setting in ("load 'auto_explain'", "set auto_explain.log_min_duration = 0",
                        "set auto_explain.log_analyze = on", "set auto_explain.log_timing = off",
                        "set auto_explain.log_nested_statements = on",
                        "set auto_explain.log_level = 'notice'"):
            conn.execute(setting.encode())
        for name, (query, _) in IDLE_RPCS.items():
            notices.clear()
            conn.execute(query.encode()).fetchall()
            found[name] = [n for n in notices if "workflow." in n or "job_steps" in n]
        conn.rollback()
    with stack.db() as conn:
        complete_claimed(conn)
    return found


def index_use(found: dict[str, list[str]]) -> dict[str, list[str]]:
    """Which indexes of the job tables each RPC's plans use, and any sequential scans."""
    out: dict[str, list[str]] = {}
    for name, texts in found.items():
        used: set[str] = set()
        for text in texts:
            for line in text.splitlines():
                line = line.strip().removeprefix("->").strip()
                if " using " in line and ("Index" in line or "Bitmap" in line):
                    used.add(line.split(" using ", 1)[1].split(" on ")[0].split()[0])
                if line.startswith("Seq Scan on ") and ("job_steps" in line or "jobs " in line):
                    used.add("SEQ SCAN " + line.split(" on ", 1)[1].split()[0])
        out[name] = sorted(used)
    return out


def print_claim_plan(found: dict[str, list[str]]) -> None:
    for text in found.get("claim_steps", []):
        if "candidates" in text or "runnable" in text:
            log("plan of claim_steps' candidate query (auto_explain):")
            print(text, flush=True)
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--levels", type=int, nargs="+", default=[0, 100_000, 1_000_000],
                        help="finished steps in history at each measure")
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--pass-budget", type=float, default=1.0)
    parser.add_argument("--keep-history", action="store_true")
    args = parser.parse_args(argv)

    levels: list[dict[str, Any]] = []
    with bench_stack() as stack:
        workflow_1 = ensure_chain_workflow(stack, 1)
        workflow_3 = ensure_chain_workflow(stack, 3)
        history_user = stack.create_users(1)[0].id
        stack.set_cron(False)
        try:
            settle(stack)
            empty_job_tables(stack)
            for level in sorted(args.levels):
                t = time.monotonic()
                missing = level - finished_steps(stack)
                if missing > 0:
                    add_history(stack, history_user, workflow_3, missing)
                generated_s = time.monotonic() - t
                history = finished_steps(stack)
                claim = measure_claim(stack, workflow_1, history_user, args.reps)
                idle = measure_idle_rpcs(stack, args.reps)
                whole = whole_idle_pass(stack, args.pass_budget, 3)
                found = plans(stack, workflow_1, history_user)
                entry = {"finished_steps": history, "history_generated_s": round(generated_s, 1),
                         "claim_batch_of_16": claim, "idle_pass": idle, "whole_idle_pass": whole,
                         "indexes_used": index_use(found), "plans": found}
                levels.append(entry)
                log(f"{history:>9} finished steps (+{generated_s:.0f} s to generate): claim of 16 "
                    f"{claim['sql_ms_median']} ms in Postgres, {claim['http_ms_median']} ms over HTTP; "
                    f"idle-pass RPCs {idle['idle_pass_rpcs_sql_ms_total']} ms in Postgres, "
                    f"{idle['idle_pass_rpcs_http_ms_median']} ms over HTTP; whole idle pass "
                    f"{whole['wall_ms_median']} ms with a {args.pass_budget} s budget "
                    f"({whole['claim_calls_per_pass']:.0f} claims)")
                log(f"  indexes: {entry['indexes_used']}")
            print_claim_plan(levels[-1]["plans"])
        finally:
            if not args.keep_history:
                empty_job_tables(stack)
            stack.set_cron(True)

    first, last = levels[0], levels[-1]
    ratios = {
        "claim_sql": round(last["claim_batch_of_16"]["sql_ms_median"]
                           / first["claim_batch_of_16"]["sql_ms_median"], 2),
        "claim_http": round(last["claim_batch_of_16"]["http_ms_median"]
                            / first["claim_batch_of_16"]["http_ms_median"], 2),
        "idle_pass_sql": round(last["idle_pass"]["idle_pass_rpcs_sql_ms_total"]
                               / first["idle_pass"]["idle_pass_rpcs_sql_ms_total"], 2),
        "idle_pass_http": round(last["idle_pass"]["idle_pass_rpcs_http_ms_median"]
                                / first["idle_pass"]["idle_pass_rpcs_http_ms_median"], 2),
    }
    label = f"{last['finished_steps']:,} / {first['finished_steps']:,} finished steps"
    log(f"ratios {label}: {ratios}")
    write_result("scale", {"params": vars(args), "ratios_last_to_first": ratios, "levels": levels})
    return 0


if __name__ == "__main__":
    sys.exit(main())
