"""Deploying files: what would change against what is deployed (a diff per object), and
publishing it: transformers first, then each workflow's draft, published with the version
and draft revision this plan saw (so a concurrent deploy is a 409, not an overwrite), then
the schedules, triggers and webhooks that start them."""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from typing import Any

from supaflow_client.client import Client, SupaflowError
from supaflow_client.files import STARTERS, Loaded, Problems

COMPARED = {"transformer": ("type", "description", "config"),
            "workflow": ("description", "definition", "active"),
            "schedule": ("workflow_id", "cron", "timezone", "input", "owner", "enabled",
                         "overlap"),
            "trigger": ("workflow_id", "table", "events", "condition", "input_mapping",
                        "owner_column", "start_at_column", "start_offset_s"),
            "webhook": ("workflow_id", "signature", "tolerance_s", "headers", "input_mapping",
                        "owner", "status")}
ORDER = ("transformer", "workflow", *STARTERS)


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


def _deployed_starters(c: Client, kinds: set[str]) -> dict[tuple[str, str], dict[str, Any]]:
    """The schedules, triggers and webhooks deployed, of the kinds the files hold (each
    list is the service role's or an admin's), as their files would say them."""
    listed: dict[tuple[str, str], dict[str, Any]] = {}
    if "schedule" in kinds:
        listed |= {("schedule", s["schedule_id"]): s for s in c.list_schedules()["schedules"]}
    if "trigger" in kinds:
        listed |= {("trigger", t["trigger_id"]): {**t, "table": t["table_name"]}
                   for t in c.list_triggers()["triggers"]}
    if "webhook" in kinds:
        listed |= {("webhook", w["webhook_id"]): w for w in c.list_webhooks()["webhooks"]}
    return listed


def _missing_secrets(items: list[Loaded]) -> list[str]:
    return [f"{item.where('secret_env')}: the environment variable {item.body['secret_env']}"
            " is not set" for item in items
            if item.kind == "webhook" and item.body.get("secret_env")
            and not os.environ.get(item.body["secret_env"])]


def plan_changes(c: Client, items: list[Loaded]) -> list[Change]:
    """Each file's object against what is deployed: create, update (with a unified diff)
    or unchanged. A deactivated workflow is an update: publishing makes it active."""
    transformers = {t["transformer_id"]: t for t in c.list_transformers()["transformers"]}
    problems = _unknown_transformers(items, set(transformers)) + _missing_secrets(items)
    if problems:
        raise Problems(problems)
    starters = _deployed_starters(c, {i.kind for i in items})
    plan: list[Change] = []
    for item in sorted(items, key=lambda i: ORDER.index(i.kind)):
        wanted = {k: item.body[k] for k in COMPARED[item.kind] if k in item.body}
        version = 0
        if item.kind == "transformer":
            old = transformers.get(item.id)
            before = None if old is None else {k: old.get(k) for k in COMPARED["transformer"]}
        elif item.kind in STARTERS:
            old = starters.get((item.kind, item.id))
            before = None if old is None else {k: old.get(k) for k in COMPARED[item.kind]}
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
            if change.action == "unchanged":
                pass
            elif item.kind == "transformer":
                c.put_transformer(item.id, item.body["type"], item.body["config"],
                                  description=item.body["description"],
                                  tenant_id=item.body.get("tenant_id"))
            elif item.kind in STARTERS:
                record |= _put_starter(c, change)
            else:
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


def _put_starter(c: Client, change: Change) -> dict[str, Any]:
    """PUT a schedule, trigger or webhook; a new webhook's secret is in the answer, once
    (the one from `secret_env`, or the one the API generated)."""
    item, body = change.item, change.item.body
    if item.kind == "schedule":
        c.put_schedule(item.id, body["workflow_id"], body["cron"], timezone=body["timezone"],
                       input_data=body["input"], owner=body["owner"], enabled=body["enabled"],
                       overlap=body["overlap"])
        return {}
    if item.kind == "trigger":
        c.put_trigger(item.id, body["workflow_id"], body["table"], body["events"],
                      condition=body["condition"], input_mapping=body["input_mapping"],
                      owner_column=body["owner_column"],
                      start_at_column=body["start_at_column"],
                      start_offset_s=body["start_offset_s"])
        return {}
    secret = os.environ[body["secret_env"]] if body["secret_env"] else None
    saved = c.put_webhook(item.id, body["workflow_id"], signature=body["signature"],
                          secret=secret if change.action == "create" else None,
                          tolerance_s=body["tolerance_s"], headers=body["headers"],
                          input_mapping=body["input_mapping"], owner=body["owner"],
                          status=body["status"])
    return {"path": saved["path"], "secret": saved["secret"]} if saved.get("secret") else {}
