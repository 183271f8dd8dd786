"""Loads the example workflows (examples/*/) into a database, validated like any definition."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from shared.definitions import check_transformers, normalise, parse_definition
from stack.config import REPO

EXAMPLES = REPO / "examples"


def _read(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def load_examples(conn: psycopg.Connection[tuple[Any, ...]], root: Path = EXAMPLES) -> list[str]:
    """Upsert each example's transformers and workflow; returns the workflow ids."""
    loaded = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for t in _read(folder / "transformers.json") or []:
            conn.execute(
                "insert into workflow.transformers (id, type, description, config, target_function)"
                " values (%s, %s, %s, %s, %s) on conflict (id) do update set type = excluded.type,"
                " description = excluded.description, config = excluded.config,"
                " target_function = excluded.target_function",
                (t["id"], t["type"], t.get("description"), Jsonb(t["config"]), t["target_function"]),
            )
        workflow = _read(folder / "workflow.json")
        if workflow is None:
            continue
        definition = parse_definition(workflow["definition"])
        known = [r[0] for r in conn.execute("select id from workflow.transformers")]
        check_transformers(definition, known)
        conn.execute(
            "insert into workflow.workflows (id, description, definition) values (%s, %s, %s)"
            " on conflict (id) do update set description = excluded.description,"
            " definition = excluded.definition",
            (workflow["id"], workflow.get("description"), Jsonb(normalise(definition))),
        )
        loaded.append(workflow["id"])
    return loaded
