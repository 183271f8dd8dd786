"""What must hold after any fault, and the checks that say so.

`check_invariants`: every job terminal (completed, or failed with a reason), no step
output recorded twice, an event log numbered without gaps that replays to the jobs and
job_steps rows. `assert_consistent_log` is the lighter check of one job an engine test
ran; `snapshot` is what a step's recording could change, to show a refused one changed nothing.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from testkit.jobs import TERMINAL, events
from testkit.stack import Stack


def assert_consistent_log(stack: Stack, job: dict[str, Any]) -> list[dict[str, Any]]:
    """No gaps, each step completed at most once, and the log ends where the job is."""
    log = events(stack, job["job_id"])
    assert [e["seq"] for e in log] == list(range(1, len(log) + 1))
    completed = [e["step_id"] for e in log if e["event_type"] == "step_completed"]
    assert len(completed) == len(set(completed)), f"a step completed twice: {completed}"
    job_events = [e for e in log if e["event_type"].startswith("job_")]
    assert job_events[0]["event_type"] == "job_created"
    assert job_events[-1]["to_status"] == job["status"]
    history = [h["status"] for h in job["state_history"]]
    assert history == [e["to_status"] for e in job_events]
    return log


def snapshot(stack: Stack, job_id: str) -> tuple[Any, ...]:
    """Everything a step's recording could change about a job."""
    job = stack.sql("select status, step_data, final_result, error_message, retry_count,"
                    " last_updated_at from workflow.jobs where id = %s", (job_id,))
    steps = stack.sql("select step_id, status, attempt, lease_token, output, error, updated_at"
                      " from workflow.job_steps where job_id = %s order by step_id", (job_id,))
    log = stack.sql("select seq, event_type, step_id, attempt from workflow.job_events"
                    " where job_id = %s order by seq", (job_id,))
    return (job, steps, log)


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
