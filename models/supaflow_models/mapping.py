"""Mapping expressions and string templates: how a step's inputs and a workflow's
final result are built from the job's input and earlier steps' outputs.

This is the one implementation; the definition validator, the orchestrator and
the transform executor all call it, so they cannot disagree about the syntax.

- `$.input.<path>` reads the job's `input_data`; `$.steps.<step_id>.output.<path>`
  reads a step's output. `$.input` and `$.steps.<id>.output` alone are the whole
  value. A path is dot-separated names (letters, digits, `_`, `-`) and list
  indices: `$.input.items[0].url`, `$.steps.split.output[2]`.
- A string that is exactly one expression becomes the referenced value, with its
  JSON type kept (a number stays a number, an object stays an object).
- A string with `{{ expression }}` templates is rendered to a string: string
  values are inserted as they are, anything else as JSON. `"{{ $.input.n }}"`
  is therefore the way to turn a number into a string.
- Any other string, and any non-string value, is a literal. A string that starts
  with `$.` or contains `{{` but is malformed is an error, never a literal, so a
  typo cannot silently become a constant.
- A mapping nests at most MAX_DEPTH levels of objects and lists; parsing is
  linear in the length of its strings.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

_NAME = r"[A-Za-z0-9_-]+"
_EXPRESSION = re.compile(
    rf"\$\.(?:input|steps\.(?P<step>{_NAME})\.output)(?P<path>(?:\.{_NAME}|\[\d+\])*)"
)
_SEGMENT = re.compile(rf"\.({_NAME})|\[(\d+)\]")
_SYNTAX = "expected $.input.<path> or $.steps.<step_id>.output.<path>"
MAX_DEPTH = 32

Path = tuple[str | int, ...]


class MappingError(ValueError):
    """A malformed expression, or one that references a value that is not there.

    `where` is the position of the offending string inside the mapping (for
    `validate`), so callers can point at e.g. `steps.1.inputs.body.url`.
    """

    def __init__(self, reason: str, where: Path = ()) -> None:
        super().__init__(f"at {format_path(where)}: {reason}" if where else reason)
        self.reason = reason
        self.where = where


def format_path(path: Path) -> str:
    """`("body", "items", 0)` -> `body.items[0]`, the same syntax expressions use."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


@dataclass(frozen=True, slots=True)
class Expression:
    """One compiled expression: its root (the input, or a step's output) and path."""

    text: str
    step: str | None
    path: Path

    def evaluate(self, context: Mapping[str, Any]) -> Any:
        if self.step is None:
            if "input" not in context:
                raise MappingError(f"{self.text}: no input in the context")
            value = context["input"]
        else:
            entry = context.get("steps", {}).get(self.step)
            if not isinstance(entry, Mapping) or "output" not in entry:
                raise MappingError(f"{self.text}: no output for step {self.step!r}")
            value = entry["output"]
        for part in self.path:
            value = self._child(value, part)
        return value

    def _child(self, value: Any, part: str | int) -> Any:
        if isinstance(part, int):
            if not isinstance(value, list):
                raise MappingError(f"{self.text}: cannot take index [{part}] of {_kind(value)}")
            if part >= len(value):
                raise MappingError(
                    f"{self.text}: no index [{part}] (the list has {len(value)} items)"
                )
            return value[part]
        if not isinstance(value, Mapping):
            raise MappingError(f"{self.text}: cannot take key {part!r} of {_kind(value)}")
        if part not in value:
            raise MappingError(f"{self.text}: no key {part!r}")
        return value[part]


@dataclass(frozen=True, slots=True)
class Template:
    """A string with `{{ expression }}` holes; `parts` alternates literals and holes."""

    text: str
    parts: tuple[str | Expression, ...]

    def render(self, context: Mapping[str, Any]) -> str:
        out: list[str] = []
        for part in self.parts:
            value = part if isinstance(part, str) else part.evaluate(context)
            out.append(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
        return "".join(out)


@lru_cache(maxsize=4096)
def compile_expression(text: str) -> Expression:
    """Parse `text`, which must be exactly one expression (cached: the orchestrator
    resolves the same few expressions for every job)."""
    match = _EXPRESSION.fullmatch(text)
    if match is None:
        raise MappingError(f"{_shorten(text)} is not a valid mapping expression: {_hint(text)}")
    path: list[str | int] = [
        name if name else int(index) for name, index in _SEGMENT.findall(match["path"])
    ]
    return Expression(text, match["step"], tuple(path))


@lru_cache(maxsize=4096)
def compile_template(text: str) -> Template:
    """Split `text` into literals and `{{ expression }}` holes: one left-to-right scan
    (a hole ends at the first `}}`; the expression inside is stripped of whitespace)."""
    parts: list[str | Expression] = []
    pos = 0
    while (start := text.find("{{", pos)) != -1:
        end = text.find("}}", start + 2)
        if end == -1:
            raise MappingError(f"in template {_shorten(text)}: '{{{{' is not closed by '}}}}'")
        if start > pos:
            parts.append(text[pos:start])
        try:
            parts.append(compile_expression(text[start + 2 : end].strip()))
        except MappingError as exc:
            raise MappingError(f"in template {_shorten(text)}: {exc.reason}") from None
        pos = end + 2
    if pos < len(text):
        parts.append(text[pos:])
    return Template(text, tuple(parts))


def _compile_string(text: str) -> Expression | Template | None:
    """What a string in a mapping means; None for a plain literal."""
    if text.startswith("$."):
        return compile_expression(text)
    if "{{" in text:
        return compile_template(text)
    return None


def resolve(mapping: Any, context: Mapping[str, Any]) -> Any:
    """Build a value from `mapping`, reading `context`:
    `{"input": {...}, "steps": {"<id>": {"output": ...}}}`.

    Dicts and lists are walked (keys are never expressions); values are shared
    with `context`, not copied.
    """
    if isinstance(mapping, str):
        compiled = _compile_string(mapping)
        if compiled is None:
            return mapping
        if isinstance(compiled, Expression):
            return compiled.evaluate(context)
        return compiled.render(context)
    if isinstance(mapping, dict):
        return {key: resolve(value, context) for key, value in mapping.items()}
    if isinstance(mapping, list):
        return [resolve(value, context) for value in mapping]
    return mapping


def validate(mapping: Any) -> None:
    """Raise MappingError for the first malformed expression or template in `mapping`."""
    _expressions(mapping)


def step_references(mapping: Any) -> set[str]:
    """The ids of the steps whose output `mapping` reads (raises for malformed ones)."""
    return {expr.step for expr in _expressions(mapping) if expr.step is not None}


def _expressions(mapping: Any, where: Path = ()) -> list[Expression]:
    """Every expression in `mapping`, compiling (and so checking) each string."""
    if len(where) > MAX_DEPTH:
        raise MappingError(f"nested more than {MAX_DEPTH} levels deep", where[:MAX_DEPTH])
    if isinstance(mapping, str):
        try:
            compiled = _compile_string(mapping)
        except MappingError as exc:
            raise MappingError(exc.reason, where) from None
        if compiled is None:
            return []
        if isinstance(compiled, Expression):
            return [compiled]
        return [part for part in compiled.parts if isinstance(part, Expression)]
    found: list[Expression] = []
    if isinstance(mapping, dict):
        for key, value in mapping.items():
            found += _expressions(value, (*where, str(key)))
    elif isinstance(mapping, list):
        for index, value in enumerate(mapping):
            found += _expressions(value, (*where, index))
    return found


def _hint(text: str) -> str:
    """Why an expression did not parse, as precisely as is cheap to tell."""
    if not re.match(rf"\$\.(?:input|steps\.{_NAME}\.output)(?=[.\[]|$)", text):
        if text.startswith("$.steps"):
            return "a step's value is read as $.steps.<step_id>.output.<path>"
        return _SYNTAX
    return "a path is dot-separated names (letters, digits, _ and -) and [index]"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _shorten(text: str, limit: int = 80) -> str:
    """Quote `text` for an error message without pasting a whole prompt into it."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
