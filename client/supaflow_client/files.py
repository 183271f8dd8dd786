"""Workflows, transformers and what starts them as files: YAML or JSON (JSON is YAML),
one object per file,

    kind: workflow                      kind: transformer
    id: greet                           id: shout
    description: Say hello              type: transform
    definition: {steps: [...]}          config: {}

    kind: schedule                      kind: trigger                   kind: webhook
    id: nightly                         id: on-signup                   id: from-github
    workflow_id: greet                  workflow_id: greet              workflow_id: greet
    cron: "0 3 * * *"                   table: public.signups           signature: github
    timezone: Europe/Paris              events: [INSERT]                secret_env: GH_SECRET

(the bodies of PUT /schedules, /triggers and /webhooks), checked with the models the
server uses (supaflow_models) before anything is sent; each problem names its file, line
and field. A webhook's secret never sits in a file: `secret_env` names the environment
variable that holds it when the webhook is created (else the API generates one).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from supaflow_models.definitions import DefinitionError, normalise
from supaflow_models.requests import (
    DraftRequest,
    ScheduleRequest,
    TransformerRequest,
    TriggerRequest,
    WebhookRequest,
)
from supaflow_models.transformers import ConfigError, validate_config

SUFFIXES = (".yaml", ".yml", ".json")
Path_ = tuple[str | int, ...]


class WorkflowFile(DraftRequest):
    """A file's workflow: PUT /workflows/{id}'s body, with its kind and id."""

    kind: Literal["workflow"]
    id: str


class TransformerFile(TransformerRequest):
    """A file's transformer: PUT /transformers/{id}'s body, with its kind and id."""

    kind: Literal["transformer"]
    id: str


class ScheduleFile(ScheduleRequest):
    """A file's schedule: PUT /schedules/{id}'s body, with its kind and id."""

    kind: Literal["schedule"]
    id: str


class TriggerFile(TriggerRequest):
    """A file's trigger: PUT /triggers/{id}'s body, with its kind and id."""

    kind: Literal["trigger"]
    id: str


class WebhookFile(WebhookRequest):
    """A file's webhook: PUT /webhooks/{id}'s body without its secret, which
    `secret_env` names instead."""

    kind: Literal["webhook"]
    id: str
    secret_env: str | None = None


# What each kind's file is read with; starters (schedules, triggers, webhooks) name a
# workflow, so they are deployed after the workflows.
FILE_MODELS: dict[str, type[BaseModel]] = {
    "transformer": TransformerFile, "workflow": WorkflowFile, "schedule": ScheduleFile,
    "trigger": TriggerFile, "webhook": WebhookFile}
STARTERS = ("schedule", "trigger", "webhook")


class JsonLikeLoader(yaml.SafeLoader):
    """YAML whose plain values are what JSON has: no dates (`2024-01-01` stays a string,
    it could not be sent), and only true/false are booleans (`on`, `yes`, `no` stay
    strings, as in YAML 1.2)."""


JsonLikeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if tag not in ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:bool")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_BOOLEAN = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
JsonLikeLoader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOLEAN, list("tTfF"))  # type: ignore[no-untyped-call]


@dataclass
class Loaded:
    """One file's object, checked: `body` is what the API takes (a workflow's definition
    normalised, as the server stores it); `lines` says where each field is."""

    path: Path
    kind: str
    id: str
    body: dict[str, Any]
    lines: dict[Path_, int]

    def where(self, field_path: str) -> str:
        """`file:line: field` for a dotted field of this file (e.g. definition.steps.0.id)."""
        return f"{self.path}:{_line_of(self.lines, _parse_dotted(field_path))}: {field_path}"


@dataclass
class Problems(Exception):
    """Every problem found, as `file:line: field: reason` lines."""

    lines: list[str]

    def __str__(self) -> str:
        return "\n".join(self.lines)


def collect(paths: list[Path]) -> list[Path]:
    """The files named, and the YAML and JSON files under the folders named, in order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        else:
            found.append(path)
    return found


def _lines(node: yaml.Node, at: Path_, out: dict[Path_, int], repeated: list[str]) -> None:
    """The line (1-based) where each key and item of a composed YAML document starts;
    keys given twice in one mapping go to `repeated` (YAML would keep the last silently)."""
    out.setdefault(at, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            here = (*at, key.value)
            if key.value in seen:
                repeated.append(f"{key.start_mark.line + 1}: "
                                f"{'.'.join(str(p) for p in here)}: is given twice")
            seen.add(key.value)
            out[here] = key.start_mark.line + 1
            _lines(value, here, out, repeated)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _lines(item, (*at, i), out, repeated)


def _parse_dotted(where: str) -> Path_:
    return tuple(int(p) if p.isdigit() else p for p in where.split("."))


def _line_of(lines: dict[Path_, int], at: Path_) -> int:
    """The line of the deepest part of `at` the file has (a missing key: its parent)."""
    while at and at not in lines:
        at = at[:-1]
    return lines.get(at, 1)


def _problem(path: Path, lines: dict[Path_, int], where: str, reason: str,
             prefix: Path_ = ()) -> str:
    at = (*prefix, *_parse_dotted(where)) if where else prefix
    field_name = ".".join(str(p) for p in at) or "(file)"
    return f"{path}:{_line_of(lines, at)}: {field_name}: {reason}"


def _definition_problem(path: Path, lines: dict[Path_, int], problem: str) -> str:
    """A DefinitionError line (`steps.1.depends_on: ...`), placed in the file."""
    where, _, reason = problem.partition(": ")
    return _problem(path, lines, where, reason, prefix=("definition",))


def load(path: Path) -> Loaded:
    """One file, checked; Problems lists everything wrong with it."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise Problems([f"{path}:1: (file): cannot read: {exc}"]) from None
    lines: dict[Path_, int] = {}
    repeated: list[str] = []
    node: yaml.Node | None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise Problems([f"{path}:{getattr(exc, 'lineno', 1)}: (file): not JSON: {exc}"]) \
                from None
        try:  # line numbers, when YAML can read this JSON (not with tabs)
            node = yaml.compose(text, Loader=JsonLikeLoader)
        except yaml.YAMLError:
            node = None
    else:
        try:
            node = yaml.compose(text, Loader=JsonLikeLoader)
            data = yaml.load(text, Loader=JsonLikeLoader)  # noqa: S506 - a safe loader
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else 1
            raise Problems([f"{path}:{line}: (file): not YAML: {exc}"]) from None
    if node is not None:
        _lines(node, (), lines, repeated)
    if repeated:
        raise Problems([f"{path}:{r}" for r in repeated])
    if not isinstance(data, dict) or data.get("kind") not in FILE_MODELS:
        raise Problems([f"{path}:1: kind: must be one of {', '.join(FILE_MODELS)} (one object"
                        " per file)"])
    try:
        parsed = FILE_MODELS[data["kind"]].model_validate(data)
    except ValidationError as exc:
        raise Problems([_problem(path, lines, ".".join(str(p) for p in e["loc"]), e["msg"])
                        for e in exc.errors()]) from None
    if isinstance(parsed, ScheduleFile | TriggerFile | WebhookFile):
        return _starter(path, lines, parsed)
    if isinstance(parsed, WorkflowFile):
        try:
            definition = normalise(parsed.definition)
        except DefinitionError as exc:
            raise Problems([_definition_problem(path, lines, p) for p in exc.problems]) from None
        body: dict[str, Any] = {"description": parsed.description, "definition": definition,
                                "tenant_id": parsed.tenant_id}
        return Loaded(path, "workflow", parsed.id, body, lines)
    assert isinstance(parsed, TransformerFile)
    try:
        validate_config(parsed.type, parsed.config)
    except ConfigError as exc:
        raise Problems([_problem(path, lines, *p.partition(": ")[::2]) for p in exc.problems]) \
            from None
    body = {"type": parsed.type, "description": parsed.description, "config": parsed.config,
            "tenant_id": parsed.tenant_id}
    return Loaded(path, "transformer", parsed.id, body, lines)


def _starter(path: Path, lines: dict[Path_, int],
             parsed: ScheduleFile | TriggerFile | WebhookFile) -> Loaded:
    """A schedule, trigger or webhook: the PUT body as the server lists it back (events in
    capitals), so that an unchanged file compares equal."""
    body = parsed.model_dump(exclude={"kind", "id"})
    if isinstance(parsed, WebhookFile):
        problems = []
        if parsed.secret is not None:
            problems.append(_problem(path, lines, "secret", "a secret in a file ends up in"
                                     " version control: name its environment variable in"
                                     " secret_env"))
        if parsed.rotate_secret:
            problems.append(_problem(path, lines, "rotate_secret", "not in a file (each deploy"
                                     " would rotate it): PUT /webhooks/{id} with rotate_secret"))
        if problems:
            raise Problems(problems)
        del body["secret"], body["rotate_secret"]
    if isinstance(parsed, TriggerFile):
        body["events"] = [event.upper() for event in parsed.events]
    return Loaded(path, str(parsed.kind), parsed.id, body, lines)


def load_all(paths: list[Path]) -> list[Loaded]:
    """Every file under `paths`, checked; Problems lists the problems of all of them, and a
    workflow using a transformer neither deployed nor among the files is the caller's
    check (it needs the server's list)."""
    files = collect(paths)
    if not files:
        raise Problems([f"{', '.join(map(str, paths))}: no .yaml, .yml or .json files"])
    loaded: list[Loaded] = []
    problems: list[str] = []
    seen: dict[tuple[str, str], Path] = {}
    for path in files:
        try:
            item = load(path)
        except Problems as exc:
            problems += exc.lines
            continue
        if (item.kind, item.id) in seen:
            problems.append(f"{path}:1: id: {item.kind} {item.id!r} is also defined in"
                            f" {seen[(item.kind, item.id)]}")
        seen[(item.kind, item.id)] = path
        loaded.append(item)
    if problems:
        raise Problems(problems)
    return loaded
