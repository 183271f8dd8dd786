"""Workflow definitions: the pydantic model every stored definition passes, and the
checks that make a definition safe to run (a DAG of known steps whose inputs only
read data that exists by the time the step runs).

A definition, as JSON:

    {
      "input_schema": {"type": "object", "required": ["audio_url"], ...},
      "retry": {"max_retries": 3},
      "steps": [
        {"id": "download", "transformer": "http-download",
         "inputs": {"url": "$.input.audio_url"}},
        {"id": "transcribe", "transformer": "gemini-prompt",
         "inputs": {"file": "$.steps.download.output"}}
      ],
      "output": {"transcript": "$.steps.transcribe.output"}
    }

- `depends_on` omitted means "the step listed before me", so a plain list of
  steps runs in order; `depends_on: []` makes a root (it runs at once), and an
  explicit list makes any DAG.
- `retry` on a step, else on the workflow, else the default policy (whole
  policies, not merged field by field); `timeout_s` defaults to 300.
- `output` is a mapping (see `supaflow_models.mapping`) that builds the job's
  `final_result`; when it is absent, `final_result` is the output of the last
  listed step.

Every one of these defaults is applied here and nowhere else: `normalise` writes
them all out, definitions are stored normalised (the database refuses any other
form, see `workflow.definition_problem`), and SQL reads them as they are.
"""

from __future__ import annotations

import json
import re
import sys
from heapq import heapify, heappop, heappush
from pathlib import Path
from typing import Any, Self

from jsonschema import Draft202012Validator, SchemaError
from jsonschema.exceptions import ValidationError as SchemaValidationError
from jsonschema.exceptions import best_match
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from supaflow_models import mapping

STEP_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
MAX_DELAY_S = 30 * 86400  # a step's delay_s, and how far ahead a start may be

Loc = tuple[str | int, ...]


class DefinitionError(ValueError):
    """A definition that cannot be stored or run; one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class InputError(ValueError):
    """`input_data` does not fit the workflow; `field` is e.g. `input_data.audio_url`."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class RetryPolicy(BaseModel):
    """Exponential backoff: attempt n waits initial_delay_s * multiplier**(n-1),
    capped at max_delay_s, give or take `jitter` (a fraction of that delay)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # The database checks the same bounds (workflow.definition_problem);
    # tests/test_definitions.py holds the two together.
    max_retries: int = Field(default=3, ge=0, le=20)
    initial_delay_s: float = Field(default=1.0, ge=0.001, le=86400)
    max_delay_s: float = Field(default=300.0, ge=0.001, le=86400)
    multiplier: float = Field(default=2.0, ge=1, le=10)
    jitter: float = Field(default=0.2, ge=0, le=1)

    @model_validator(mode="after")
    def _cap_not_below_start(self) -> Self:
        if self.max_delay_s < self.initial_delay_s:
            raise ValueError("max_delay_s must not be less than initial_delay_s")
        return self


class Step(BaseModel):
    """One node of the DAG. `depends_on` is None only until the workflow that holds
    the step fills its default in (a validated definition always has a list)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str = Field(pattern=STEP_ID_PATTERN)
    transformer: str = Field(min_length=1, max_length=128)
    depends_on: list[str] | None = None
    inputs: dict[str, Any] = Field(default_factory=dict)
    retry: RetryPolicy | None = None
    timeout_s: int = Field(default=300, ge=1, le=900)
    # Seconds to wait, once its dependencies complete (or the job starts, for a root
    # step), before the step runs: "follow up an hour later". At most 30 days.
    delay_s: float = Field(default=0, ge=0, le=MAX_DELAY_S)

    @field_validator("inputs")
    @classmethod
    def _inputs_are_mappings(cls, inputs: dict[str, Any]) -> dict[str, Any]:
        mapping.validate(inputs)
        return inputs


class WorkflowDefinition(BaseModel):
    """A validated workflow: unique ids, existing dependencies, no cycles, valid
    expressions that only read the input and the outputs of ancestor steps."""

    model_config = ConfigDict(extra="forbid", strict=True)

    steps: list[Step] = Field(min_length=1, max_length=100)
    output: Any = None
    input_schema: dict[str, Any] | None = None
    retry: RetryPolicy | None = None

    @field_validator("output")
    @classmethod
    def _output_is_mapping(cls, output: Any) -> Any:
        mapping.validate(output)
        return output

    @field_validator("input_schema")
    @classmethod
    def _input_schema_is_json_schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is not None:
            try:
                Draft202012Validator.check_schema(schema)
            except SchemaError as exc:
                raise ValueError(
                    f"not a valid JSON Schema: {exc.message} (at {exc.json_path})"
                ) from None
            except RecursionError:
                raise ValueError("not a valid JSON Schema: nested too deeply") from None
        return schema

    @model_validator(mode="after")
    def _check_graph(self) -> Self:
        # Fill in the default dependency (copies, so a caller's Step objects are untouched).
        self.steps = [
            step
            if step.depends_on is not None
            else step.model_copy(update={"depends_on": [self.steps[i - 1].id] if i else []})
            for i, step in enumerate(self.steps)
        ]
        problems = _graph_problems(self)
        if problems:
            raise DefinitionError(problems)
        return self


def parse_definition(raw: Any) -> WorkflowDefinition:
    """Validate a raw (JSON-decoded) definition; DefinitionError lists every problem."""
    try:
        return WorkflowDefinition.model_validate(raw)
    except ValidationError as exc:
        problems: list[str] = []
        for error in exc.errors():
            loc: Loc = tuple(error["loc"])
            cause = error.get("ctx", {}).get("error")
            if isinstance(cause, DefinitionError):
                problems += cause.problems
            elif isinstance(cause, mapping.MappingError):
                problems.append(f"{_dotted((*loc, *cause.where))}: {cause.reason}")
            elif isinstance(cause, ValueError):
                problems.append(f"{_dotted(loc)}: {cause}")
            else:
                problems.append(f"{_dotted(loc)}: {error['msg']}{_got(error)}")
        raise DefinitionError(problems) from None


def validate_input(defn: WorkflowDefinition, input_data: Any) -> None:
    """Check a job's input before the job exists, naming the failing field."""
    if not isinstance(input_data, dict):
        raise InputError(
            "input_data", f"input_data: must be a JSON object, not {type(input_data).__name__}"
        )
    if defn.input_schema is None:
        return
    validator = Draft202012Validator(
        defn.input_schema, format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    try:
        error = best_match(validator.iter_errors(input_data))
    except RecursionError:
        raise InputError("input_data", "input_data: nested too deeply to validate") from None
    if error is None:
        return
    path: Loc = ("input_data", *error.absolute_path)
    reason = error.message
    missing = _missing_or_extra(error)
    if missing is not None:
        path, reason = (*path, missing[0]), missing[1]
    field = _dotted(path)
    raise InputError(field, f"{field}: {_truncate(reason, 300)}")


def normalise(raw: Any) -> dict[str, Any]:
    """The stored form of a definition: validated (DefinitionError otherwise), with
    every default written out (each step's dependencies, retry policy and timeout;
    the output mapping), so the database applies none. Normalising a normalised
    definition changes nothing."""
    defn = raw if isinstance(raw, WorkflowDefinition) else parse_definition(raw)
    default_retry = defn.retry or RetryPolicy()
    return {
        "input_schema": defn.input_schema,
        "steps": [
            {
                "id": step.id,
                "transformer": step.transformer,
                "depends_on": list(step.depends_on or []),
                "inputs": step.inputs,
                "retry": (step.retry or default_retry).model_dump(),
                "timeout_s": step.timeout_s,
                "delay_s": step.delay_s,
            }
            for step in defn.steps
        ],
        "output": defn.output if defn.output is not None else f"$.steps.{defn.steps[-1].id}.output",
    }


def _graph_problems(defn: WorkflowDefinition) -> list[str]:
    """Everything wrong with the DAG, in the order a reader would fix it."""
    problems: list[str] = []
    ids = [step.id for step in defn.steps]
    seen: set[str] = set()
    for i, step_id in enumerate(ids):
        if step_id in seen:
            problems.append(f"steps.{i}.id: duplicate step id {step_id!r}")
        seen.add(step_id)
    deps = {step.id: step.depends_on or [] for step in defn.steps}
    for i, step in enumerate(defn.steps):
        listed: set[str] = set()
        for dep in step.depends_on or []:
            where = f"steps.{i}.depends_on"
            if dep == step.id:
                problems.append(f"{where}: step {step.id!r} depends on itself")
            elif dep not in seen:
                problems.append(f"{where}: step {step.id!r} depends on unknown step {dep!r}")
            elif dep in listed:
                problems.append(f"{where}: step {step.id!r} lists {dep!r} more than once")
            listed.add(dep)
    if problems:
        return problems  # The checks below need a well-formed graph.

    order, cycle = _toposort(deps)
    if cycle:
        return [f"steps: dependency cycle {' -> '.join(cycle)} (each step depends on the next)"]

    ancestors: dict[str, set[str]] = {}
    for step_id in order:
        ancestors[step_id] = set(deps[step_id]).union(*(ancestors[d] for d in deps[step_id]))
    for i, step in enumerate(defn.steps):
        for ref in sorted(mapping.step_references(step.inputs)):
            where = f"steps.{i}.inputs"
            if ref == step.id:
                problems.append(f"{where}: step {step.id!r} reads its own output")
            elif ref not in seen:
                problems.append(f"{where}: step {step.id!r} reads unknown step {ref!r}")
            elif ref not in ancestors[step.id]:
                problems.append(
                    f"{where}: step {step.id!r} reads step {ref!r}, which is not among its"
                    f" dependencies, so it may not have run yet (add it to depends_on)"
                )
    for ref in sorted(mapping.step_references(defn.output)):
        if ref not in seen:
            problems.append(f"output: reads unknown step {ref!r}")
    return problems


def _toposort(deps: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """Kahn's algorithm with ties broken by listing order. Returns the order and,
    if some steps could not be ordered, one cycle among them (first id repeated
    at the end); the cycle is empty when there is none."""
    ids = list(deps)
    index = {step_id: i for i, step_id in enumerate(ids)}
    waiting = {step_id: len(d) for step_id, d in deps.items()}
    dependents: dict[str, list[str]] = {step_id: [] for step_id in ids}
    for step_id, d in deps.items():
        for dep in d:
            dependents[dep].append(step_id)
    ready = [index[step_id] for step_id in ids if waiting[step_id] == 0]
    heapify(ready)
    order: list[str] = []
    while ready:
        step_id = ids[heappop(ready)]
        order.append(step_id)
        for later in dependents[step_id]:
            waiting[later] -= 1
            if waiting[later] == 0:
                heappush(ready, index[later])
    if len(order) == len(ids):
        return order, []
    # Every step left over waits for another left-over step; follow those until one repeats.
    path: list[str] = []
    position: dict[str, int] = {}
    step_id = next(s for s in ids if waiting[s] > 0)
    while step_id not in position:
        position[step_id] = len(path)
        path.append(step_id)
        step_id = next(d for d in deps[step_id] if waiting[d] > 0)
    return order, [*path[position[step_id] :], step_id]


def _missing_or_extra(error: SchemaValidationError) -> tuple[str, str] | None:
    """For `required` and `additionalProperties` failures jsonschema points at the
    parent object; name the property itself, which is what the user must fix."""
    instance, schema = error.instance, error.schema
    if not isinstance(instance, dict) or not isinstance(schema, dict):
        return None
    if error.validator == "required":
        for name in error.validator_value:
            if name not in instance:
                return str(name), "is required"
    if error.validator == "additionalProperties" and error.validator_value is False:
        known = schema.get("properties", {})
        patterns = schema.get("patternProperties", {})
        for name in instance:
            if name not in known and not any(re.search(p, name) for p in patterns):
                return str(name), "is not an allowed property"
    return None


def _dotted(loc: Loc) -> str:
    """`("steps", 1, "depends_on")` -> `steps.1.depends_on`; the root is `definition`."""
    return ".".join(str(part) for part in loc) or "definition"


def _got(error: Any) -> str:
    """The offending value, when it is short enough to help rather than flood."""
    if error["type"] == "missing":
        return ""
    value = error.get("input")
    if isinstance(value, str | int | float | bool) or value is None:
        return f" (got {_truncate(repr(value), 60)})"
    return ""


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    """`python -m supaflow_models.definitions workflow.json`: the definition's stored form (every
    default written out) on stdout, for `insert into workflow.workflows`; or each
    problem on stderr and exit status 1."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m supaflow_models.definitions DEFINITION.json (or - for stdin)",
              file=sys.stderr)
        return 2
    try:
        text = sys.stdin.read() if args[0] == "-" else Path(args[0]).read_text(encoding="utf-8")
        print(json.dumps(normalise(json.loads(text))))
    except (OSError, ValueError) as exc:  # DefinitionError is a ValueError, one problem per line
        print(str(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
