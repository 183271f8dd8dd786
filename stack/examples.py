"""Loads the example workflows (examples/*/) into the running stack through the admin API
(PUT /transformers, PUT /workflows, publish), so they are checked exactly as a user's are."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from stack.config import REPO

EXAMPLES = REPO / "examples"


class ExampleRefused(RuntimeError):
    """The API refused an example: the example, not the stack, is wrong."""


def _read(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _call(http: httpx.Client, method: str, path: str, body: dict[str, Any] | None) -> Any:
    response = http.request(method, path, json=body)
    if response.status_code >= 300:
        raise ExampleRefused(f"{method} {path}: {response.status_code} {response.text}")
    return response.json()


def load_examples(api_url: str, service_role_key: str, root: Path = EXAMPLES) -> list[str]:
    """Put and publish each example's transformers and workflow; returns the workflow ids.
    Publishing an unchanged example makes no new version."""
    loaded = []
    headers = {"Authorization": f"Bearer {service_role_key}"}
    with httpx.Client(base_url=api_url, headers=headers, timeout=30) as http:
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            for t in _read(folder / "transformers.json") or []:
                body = {k: v for k, v in t.items() if k != "id"}
                _call(http, "PUT", f"/transformers/{t['id']}", body)
            workflow = _read(folder / "workflow.json")
            if workflow is None:
                continue
            body = {"description": workflow.get("description"), "definition": workflow["definition"]}
            _call(http, "PUT", f"/workflows/{workflow['id']}", body)
            _call(http, "POST", f"/workflows/{workflow['id']}/publish", None)
            loaded.append(workflow["id"])
    return loaded
