"""Publishes the example workflows (examples/*/) to the running stack with the `supaflow`
command's own code (files checked by supaflow_client.files, published by its deploy), so
they go through exactly what a user's deploy does."""

from __future__ import annotations

from pathlib import Path

from stack.config import REPO

EXAMPLES = REPO / "examples"


def load_examples(api_url: str, service_role_key: str, root: Path = EXAMPLES) -> list[str]:
    """Deploy every example; returns the workflow ids. An unchanged example publishes nothing."""
    # Imported here: `python -m stack status|down` must work even if the client does not.
    from supaflow_client.client import Client
    from supaflow_client.deploy import apply_changes, plan_changes
    from supaflow_client.files import load_all

    items = load_all([root])
    with Client(api_url, service_role_key) as client:
        apply_changes(client, plan_changes(client, items))
    return [item.id for item in items if item.kind == "workflow"]
