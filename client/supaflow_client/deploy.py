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


@dataclass
class Change:
    item: Loaded
    action: str  # "create", "update", "unchanged"
    diff: list[str]
    version: int | None = None  # a workflow's deployed version


def _pretty(value: Any) -> list[str]:
    return json.dumps(value, indent=2, sort_keys=True).splitlines()


def plan_changes(c: Client, items: list[Loaded]) -> list[Change]:
    transformers = {t["transformer_id"]: t for t in c.list_transformers()["transformers"]}
    local_transformers = {i.id for i in items if i.kind == "transformer"}
    problems = [
        f"{i.path}: definition.steps: step {s['id']!r} uses transformer {s['transformer']!r},"
        " which is neither deployed nor in these files"
        for i in items if i.kind == "workflow" for s in i.body["definition"]["steps"]
        if s["transformer"] not in transformers and s["transformer"] not in local_transformers]
    if problems:
        raise Problems(problems)
    plan: list[Change] = []
    for item in sorted(items, key=lambda i: i.kind != "transformer"):  # transformers first
        if item.kind == "transformer":
            old = transformers.get(item.id)
            before = None if old is None else {k: old[k] for k in ("type", "description", "config")}
            version = None
        else:
            try:
                shown = c.get_workflow(item.id)
                before = {"description": shown["description"], "definition": shown["definition"]}
                version = shown["version"] or 0
            except SupaflowError as exc:
                if exc.status != 404:
                    raise
                before, version = None, 0
        if before == item.body:
            plan.append(Change(item, "unchanged", [], version))
            continue
        diff = list(difflib.unified_diff(
            _pretty(before) if before is not None else [], _pretty(item.body),
            f"deployed {item.kind} {item.id}", f"{item.path}", lineterm=""))
        plan.append(Change(item, "create" if before is None else "update", diff, version))
    return plan


def apply_changes(c: Client, plan: list[Change]) -> list[dict[str, Any]]:
    done: list[dict[str, Any]] = []
    for change in plan:
        item = change.item
        if change.action == "unchanged":
            done.append({"kind": item.kind, "id": item.id, "action": "unchanged"})
            continue
        if item.kind == "transformer":
            c.put_transformer(item.id, item.body["type"], item.body["config"],
                              description=item.body["description"])
            done.append({"kind": item.kind, "id": item.id, "action": change.action})
            continue
        draft = c.put_workflow(item.id, item.body["definition"],
                               description=item.body["description"])
        published = c.publish_workflow(item.id, expected_version=change.version,
                                       draft_revision=draft["draft"]["revision"])
        done.append({"kind": item.kind, "id": item.id, "action": change.action,
                     "version": published["version"]})
    return done


