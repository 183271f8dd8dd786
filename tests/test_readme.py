"""The README's "Start a workflow" section, run as a reader would: its sh blocks in order,
in bash, against the running stack; each way must have started a `hello` job that
greets the name it gave."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from testkit.jobs import wait_status
from testkit.stack import Stack

REPO = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- starts:", "<!-- /starts -->"


def start_blocks() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index(BEGIN):text.index(END)]
    blocks = re.findall(r"^```sh\n(.*?)^```", section, flags=re.S | re.M)
    assert len(blocks) >= 6, "the section lost its examples"
    return "\n".join(blocks)


def clean_up(stack: Stack) -> None:
    """What the README creates, gone: it may run again (and cron runs nothing of it)."""
    stack.sql("drop table if exists public.signups")
    stack.sql("delete from workflow.event_triggers where id = 'hello-on-signup'")
    stack.sql("delete from workflow.webhooks where id = 'hello-hook'")
    stack.sql("delete from workflow.schedules where id = 'hello-nightly'")
    stack.sql("delete from cron.job where jobname = 'supaflow-schedule:hello-nightly'")
    stack.sql("delete from workflow.jobs where workflow_id = 'hello'")


@pytest.mark.timeout(180)
def test_every_way_to_start_in_the_readme_works(stack: Stack) -> None:
    clean_up(stack)
    try:
        ran = subprocess.run(["bash", "-euo", "pipefail", "-c", start_blocks()], cwd=REPO,
                             capture_output=True, text=True, timeout=120, check=False)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert '"error": {' not in ran.stdout, ran.stdout  # an API refusal
        jobs = stack.sql("select id::text, origin, input_data ->> 'name' from workflow.jobs"
                         " where workflow_id = 'hello' order by created_at")
        assert sorted((origin, name) for _, origin, name in jobs) == [
            ("api", "Ada"), ("api", "later"), ("schedule", "night shift"), ("sql", "Bob"),
            ("trigger", "carol@example.test"), ("webhook", "Dave")]
        for job_id, _, name in jobs:
            assert wait_status(stack, job_id, "completed", 60) == "completed"
            (result,) = stack.sql("select final_result from workflow.jobs where id = %s",
                                  (job_id,))[0]
            assert result == {"greeting": f"Hello, {name}!"}
        assert stack.sql("select count(*) from cron.job where jobname like '%hello-nightly'") \
            == [(0,)], "the README deletes its schedule"
    finally:
        clean_up(stack)
