"""Deploying files: what would change against what is deployed (a diff per object), and
publishing it: transformers first, then each workflow's draft, published with the version
and draft revision this plan saw (so a concurrent deploy is a 409, not an overwrite)."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any

from supaflow_client.client import Client, SupaflowError
from supaflow_client.files import Loaded, Problems

COMPARED = {"transformer": ("type", "description", "config"),
            "workflow": ("description", "definition", "active")}


@dataclass
class Change:
    item: Loaded
    action: str  # "create", "update", "unchanged"
    diff: list[str]
    version: int = 0  # a workflow's published version (0: none yet)


@dataclass
class Failed(Exception):
    """A deploy stopped by the API: what was published before, and why it stopped."""

    done: list[dict[str, Any]]
    item: Loaded
    error: SupaflowError


def _pretty(value: Any) -> list[str]:
    return json.dumps(value, indent=2, sort_keys=True).splitlines()


def _unknown_transformers(items: list[Loaded], deployed: set[str]) -> list[str]:
    """Steps whose transformer is neither deployed (that the caller may use) nor in the
    files, each at its file and line: the server would refuse them (422)."""
    known = deployed | {i.id for i in items if i.kind == "transformer"}
    return [f"{item.where(f'definition.steps.{n}.transformer')}: step {step['id']!r} uses"
            f" {step['transformer']!r}, which is neither deployed nor in these files"
            for item in items if item.kind == "workflow"
            for n, step in enumerate(item.body["definition"]["steps"])
            if step["transformer"] not in known]


def _deployed_workflow(c: Client, workflow_id: str) -> tuple[dict[str, Any] | None, int]:
    """What is published now (None when nothing is, also when only a draft exists) and
    its version."""
    try:
        shown = c.get_workflow(workflow_id)
    except SupaflowError as exc:
        if exc.status == 404:
            return None, 0
        raise
    if not shown.get("version"):
        return None, 0
    current = shown.get("versions", [{}])[0]
    return {"description": current.get("description"), "definition": shown["definition"],
            "active": shown["active"]}, int(shown["version"])


def plan_changes(c: Client, items: list[Loaded]) -> list[Change]:
    """Each file's object against what is deployed: create, update (with a unified diff)
    or unchanged. A deactivated workflow is an update: publishing makes it active."""
    transformers = {t["transformer_id"]: t for t in c.list_transformers()["transformers"]}
    problems = _unknown_transformers(items, set(transformers))
    if problems:
        raise Problems(problems)
    plan: list[Change] = []
    for item in sorted(items, key=lambda i: i.kind != "transformer"):  # transformers first
        wanted = {k: item.body[k] for k in COMPARED[item.kind] if k in item.body}
        if item.kind == "transformer":
            old = transformers.get(item.id)
            before = None if old is None else {k: old.get(k) for k in COMPARED["transformer"]}
            version = 0
        else:
            before, version = _deployed_workflow(c, item.id)
            wanted["active"] = True
        if before == wanted:
            plan.append(Change(item, "unchanged", [], version))
            continue
        diff = list(difflib.unified_diff(
            _pretty(before) if before is not None else [], _pretty(wanted),
            f"deployed {item.kind} {item.id}", f"{item.path}", lineterm=""))
        plan.append(Change(item, "create" if before is None else "update", diff, version))
    return plan


def apply_changes(c: Client, plan: list[Change]) -> list[dict[str, Any]]:
    """Publish the plan in order; Failed says what was done before an API refusal."""
    done: list[dict[str, Any]] = []
    for change in plan:
        item = change.item
        record: dict[str, Any] = {"kind": item.kind, "id": item.id, "action": change.action}
        try:
            if change.action != "unchanged" and item.kind == "transformer":
                c.put_transformer(item.id, item.body["type"], item.body["config"],
                                  description=item.body["description"],
                                  tenant_id=item.body.get("tenant_id"))
            elif change.action != "unchanged":
                draft = c.put_workflow(item.id, item.body["definition"],
                                       description=item.body["description"],
                                       tenant_id=item.body.get("tenant_id"))
                published = c.publish_workflow(item.id, expected_version=change.version,
                                               draft_revision=draft["draft"]["revision"])
                record["version"] = published["version"]
        except SupaflowError as exc:
            raise Failed(done, item, exc) from exc
        done.append(record)
    return done
