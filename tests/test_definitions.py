"""Workflow definitions: defaults, the DAG checks, input validation and retry precedence."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest
from pydantic import ValidationError

from supaflow_models.definitions import (
    DefinitionError,
    InputError,
    RetryPolicy,
    Step,
    WorkflowDefinition,
    normalise,
    parse_definition,
    validate_input,
)


def step(step_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "transformer": "transform", **extra}


def problems_of(raw: Any) -> list[str]:
    with pytest.raises(DefinitionError) as info:
        parse_definition(raw)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


AUDIO: dict[str, Any] = {
    "input_schema": {
        "type": "object",
        "required": ["audio_url"],
        "properties": {
            "audio_url": {"type": "string", "minLength": 8},
            "options": {
                "type": "object",
                "properties": {
                    "language": {"type": "string", "enum": ["en", "fr"]},
                    "speakers": {"type": "array", "items": {"type": "integer", "minimum": 1}},
                },
                "additionalProperties": False,
            },
        },
    },
    "steps": [
        {
            "id": "download",
            "transformer": "http-download",
            "inputs": {"url": "$.input.audio_url"},
        },
        {
            "id": "transcribe",
            "transformer": "gemini-prompt",
            "inputs": {
                "file": "$.steps.download.output",
                "prompt": "Transcribe {{ $.steps.download.output.key }}",
            },
            "retry": {"max_retries": 5},
            "timeout_s": 600,
        },
    ],
    "output": {"transcript": "$.steps.transcribe.output", "source": "$.input.audio_url"},
}


def test_a_complete_definition_parses() -> None:
    defn = parse_definition(AUDIO)
    assert [s.id for s in defn.steps] == ["download", "transcribe"]
    by_id = {s.id: s for s in defn.steps}
    transcribe = by_id["transcribe"]
    assert transcribe.timeout_s == 600
    assert transcribe.retry == RetryPolicy(max_retries=5)
    assert by_id["download"].timeout_s == 300
    assert defn.output == AUDIO["output"]


def test_depends_on_defaults_to_the_previous_step() -> None:
    defn = parse_definition({"steps": [step("a"), step("b"), step("c")]})
    assert [s.depends_on for s in defn.steps] == [[], ["a"], ["b"]]


def test_explicit_empty_depends_on_makes_a_root() -> None:
    defn = parse_definition(
        {
            "steps": [
                step("a"),
                step("b", depends_on=[]),
                step("c"),
                step("d", depends_on=["a", "b"]),
            ]
        }
    )
    assert [s.depends_on for s in defn.steps] == [[], [], ["b"], ["a", "b"]]


def test_normalised_form_round_trips() -> None:
    defn = parse_definition({"steps": [step("a"), step("b")]})
    dumped = defn.model_dump()
    assert dumped["steps"][1]["depends_on"] == ["a"]
    assert parse_definition(dumped) == defn


def test_callers_step_objects_are_not_mutated() -> None:
    a, b = Step(id="a", transformer="t"), Step(id="b", transformer="t")
    defn = WorkflowDefinition(steps=[a, b])
    assert b.depends_on is None
    assert defn.steps[1].depends_on == ["a"]


def test_duplicate_step_ids() -> None:
    problems = problems_of({"steps": [step("a"), step("b"), step("a")]})
    assert problems == ["steps.2.id: duplicate step id 'a'"]


def test_unknown_dependency() -> None:
    problems = problems_of({"steps": [step("a"), step("b", depends_on=["a", "ghost"])]})
    assert problems == ["steps.1.depends_on: step 'b' depends on unknown step 'ghost'"]


def test_self_dependency() -> None:
    problems = problems_of({"steps": [step("a", depends_on=["a"])]})
    assert problems == ["steps.0.depends_on: step 'a' depends on itself"]


def test_dependency_listed_twice() -> None:
    problems = problems_of({"steps": [step("a"), step("b", depends_on=["a", "a"])]})
    assert problems == ["steps.1.depends_on: step 'b' lists 'a' more than once"]


def test_several_graph_problems_are_all_reported() -> None:
    problems = problems_of({"steps": [step("a", depends_on=["a"]), step("a", depends_on=["nope"])]})
    assert len(problems) == 3
    assert problems[0].startswith("steps.1.id:")


def test_cycle_is_named() -> None:
    problems = problems_of(
        {
            "steps": [
                step("root"),
                step("a", depends_on=["root", "c"]),
                step("b", depends_on=["a"]),
                step("c", depends_on=["b"]),
            ]
        }
    )
    assert len(problems) == 1
    assert problems[0].startswith("steps: dependency cycle ")
    cycle = problems[0].removeprefix("steps: dependency cycle ").split(" (")[0].split(" -> ")
    assert cycle[0] == cycle[-1]
    assert sorted(cycle[:-1]) == ["a", "b", "c"]
    # Each step in the message depends on the next one.
    deps = {"a": ["root", "c"], "b": ["a"], "c": ["b"]}
    assert all(later in deps[first] for first, later in pairwise(cycle))


def test_two_step_cycle() -> None:
    problems = problems_of({"steps": [step("x", depends_on=["y"]), step("y")]})
    assert problems == ["steps: dependency cycle x -> y -> x (each step depends on the next)"]


def test_inputs_may_not_read_a_step_that_is_not_an_ancestor() -> None:
    problems = problems_of(
        {
            "steps": [
                step("a"),
                step("b", depends_on=[]),
                step("c", depends_on=["a"], inputs={"x": "{{ $.steps.b.output.v }}"}),
            ]
        }
    )
    assert len(problems) == 1
    assert problems[0].startswith("steps.2.inputs: step 'c' reads step 'b', which is not among")


def test_inputs_may_read_transitive_ancestors() -> None:
    defn = parse_definition(
        {
            "steps": [
                step("a"),
                step("b"),
                step("c", inputs={"first": "$.steps.a.output", "input": "$.input"}),
            ]
        }
    )
    assert defn.steps[2].depends_on == ["b"]


def test_inputs_may_not_read_a_later_step_even_in_a_sequence() -> None:
    problems = problems_of({"steps": [step("a", inputs={"x": "$.steps.b.output"}), step("b")]})
    assert problems == [
        "steps.0.inputs: step 'a' reads step 'b', which is not among its dependencies,"
        " so it may not have run yet (add it to depends_on)"
    ]


def test_inputs_reading_own_or_unknown_step() -> None:
    problems = problems_of(
        {"steps": [step("a", inputs={"x": "$.steps.a.output", "y": ["$.steps.zz.output"]})]}
    )
    assert problems == [
        "steps.0.inputs: step 'a' reads its own output",
        "steps.0.inputs: step 'a' reads unknown step 'zz'",
    ]


def test_output_may_read_any_step_but_not_unknown_ones() -> None:
    defn = parse_definition(
        {
            "steps": [step("a"), step("b", depends_on=[])],
            "output": {"a": "$.steps.a.output", "b": "$.steps.b.output"},
        }
    )
    assert normalise(defn)["output"] == {"a": "$.steps.a.output", "b": "$.steps.b.output"}
    problems = problems_of({"steps": [step("a")], "output": "$.steps.nope.output"})
    assert problems == ["output: reads unknown step 'nope'"]


def test_without_output_the_result_is_the_last_steps_output() -> None:
    defn = parse_definition({"steps": [step("a"), step("b")]})
    assert defn.output is None
    assert normalise(defn)["output"] == "$.steps.b.output"


def test_invalid_expressions_are_reported_with_their_location() -> None:
    problems = problems_of(
        {
            "steps": [
                step("a"),
                step("b", inputs={"body": {"items": ["ok", "$.steps.a.result"]}}),
            ],
            "output": "{{ $.input.x",
        }
    )
    assert len(problems) == 2
    assert problems[0].startswith(
        "steps.1.inputs.body.items.1: '$.steps.a.result' is not a valid mapping expression"
    )
    assert problems[1].startswith("output: in template")


def test_invalid_input_schema() -> None:
    problems = problems_of({"steps": [step("a")], "input_schema": {"type": "objekt"}})
    assert len(problems) == 1
    assert problems[0].startswith("input_schema: not a valid JSON Schema")
    assert "$.type" in problems[0]


def test_field_errors_name_their_location() -> None:
    problems = problems_of(
        {
            "steps": [
                step("a"),
                {"id": "has space", "transformer": "t", "timeout_s": 901, "colour": "red"},
                step("c", retry={"max_retries": 21, "jitter": 1.5}, depends_on="a"),
            ],
            "extra": True,
        }
    )
    assert any(p.startswith("steps.1.id: String should match pattern") for p in problems)
    assert any(p.startswith("steps.1.timeout_s:") and "(got 901)" in p for p in problems)
    assert any(p.startswith("steps.1.colour: Extra inputs are not permitted") for p in problems)
    assert any(p.startswith("steps.2.retry.max_retries:") for p in problems)
    assert any(p.startswith("steps.2.retry.jitter:") for p in problems)
    assert any(p.startswith("steps.2.depends_on:") for p in problems)
    assert any(p.startswith("extra: Extra inputs are not permitted") for p in problems)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ([], "definition: Input should be a valid dictionary"),
        ({}, "steps: Field required"),
        ({"steps": []}, "steps: List should have at least 1 item"),
        ({"steps": [step(f"s{i}") for i in range(101)]}, "steps: List should have at most 100"),
        ({"steps": [step("a", timeout_s="30")]}, "steps.0.timeout_s: Input should be a valid"),
        ({"steps": [step("a", transformer="")]}, "steps.0.transformer: String should have"),
        ({"steps": [step("x" * 65)]}, "steps.0.id: String should match pattern"),
        (
            {"steps": [step("a")], "retry": {"initial_delay_s": 10, "max_delay_s": 5}},
            "retry: max_delay_s must not be less than initial_delay_s",
        ),
        ({"steps": [step("a")], "retry": {"initial_delay_s": 0}}, "retry.initial_delay_s:"),
        ({"steps": [step("a")], "retry": {"multiplier": 0.5}}, "retry.multiplier:"),
    ],
)
def test_malformed_definitions(raw: Any, fragment: str) -> None:
    problems = problems_of(raw)
    assert any(p.startswith(fragment) for p in problems), problems


def test_model_validate_reports_graph_problems_through_pydantic() -> None:
    with pytest.raises(ValidationError, match="depends on unknown step 'ghost'"):
        WorkflowDefinition.model_validate({"steps": [step("a", depends_on=["ghost"])]})


def test_validate_input_accepts_good_input() -> None:
    defn = parse_definition(AUDIO)
    validate_input(defn, {"audio_url": "https://example.com/a.mp3"})
    validate_input(
        defn,
        {"audio_url": "https://example.com/a.mp3", "options": {"language": "fr", "speakers": [2]}},
    )


@pytest.mark.parametrize(
    ("input_data", "field", "reason"),
    [
        ({}, "input_data.audio_url", "is required"),
        ({"audio_url": 5}, "input_data.audio_url", "5 is not of type 'string'"),
        ({"audio_url": "short"}, "input_data.audio_url", "is too short"),
        (
            {"audio_url": "https://x.org/a", "options": {"language": "de"}},
            "input_data.options.language",
            "'de' is not one of ['en', 'fr']",
        ),
        (
            {"audio_url": "https://x.org/a", "options": {"speakers": [1, 0]}},
            "input_data.options.speakers.1",
            "0 is less than the minimum of 1",
        ),
        (
            {"audio_url": "https://x.org/a", "options": {"colour": "red"}},
            "input_data.options.colour",
            "is not an allowed property",
        ),
        ([1, 2], "input_data", "must be a JSON object"),
    ],
)
def test_validate_input_names_the_failing_field(input_data: Any, field: str, reason: str) -> None:
    defn = parse_definition(AUDIO)
    with pytest.raises(InputError) as info:
        validate_input(defn, input_data)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert reason in str(info.value)


def test_without_input_schema_input_must_still_be_an_object() -> None:
    defn = parse_definition({"steps": [step("a")]})
    validate_input(defn, {"anything": [1, 2]})
    for bad in (None, "text", 3, ["a"]):
        with pytest.raises(InputError) as info:
            validate_input(defn, bad)
        assert info.value.field == "input_data"


def test_input_schema_for_a_non_object_root_still_needs_an_object() -> None:
    defn = parse_definition({"steps": [step("a")], "input_schema": {}})
    with pytest.raises(InputError):
        validate_input(defn, "string")


def test_normalise_writes_every_retry_policy_out_whole() -> None:
    step_policy: dict[str, Any] = {"max_retries": 7, "initial_delay_s": 0.5}
    workflow_policy: dict[str, Any] = {"max_retries": 1, "max_delay_s": 60}
    stored = normalise(
        {
            "steps": [step("own", retry=step_policy), step("inherits")],
            "retry": workflow_policy,
        }
    )
    own, inherits = stored["steps"]
    # A step's policy replaces the workflow's entirely; fields are not merged.
    assert own["retry"] == RetryPolicy(**step_policy).model_dump()
    assert own["retry"]["max_delay_s"] == 300
    assert inherits["retry"] == RetryPolicy(**workflow_policy).model_dump()

    bare = normalise({"steps": [step("a")]})
    assert bare["steps"][0]["retry"] == {
        "max_retries": 3, "initial_delay_s": 1.0, "max_delay_s": 300, "multiplier": 2.0, "jitter": 0.2
    }


def test_normalise_writes_every_default_out_and_is_idempotent() -> None:
    stored = normalise({"steps": [step("a"), step("b", timeout_s=30)]})
    assert stored["output"] == "$.steps.b.output"
    assert [s["depends_on"] for s in stored["steps"]] == [[], ["a"]]
    assert [s["timeout_s"] for s in stored["steps"]] == [300, 30]
    assert all(s["inputs"] == {} for s in stored["steps"])
    assert normalise(stored) == stored
    audio = normalise(AUDIO)
    assert normalise(audio) == audio


def test_input_schema_formats_are_checked() -> None:
    defn = parse_definition(
        {
            "steps": [step("a")],
            "input_schema": {"properties": {"email": {"type": "string", "format": "email"}}},
        }
    )
    validate_input(defn, {"email": "someone@example.com"})
    with pytest.raises(InputError) as info:
        validate_input(defn, {"email": "not-an-address"})
    assert info.value.field == "input_data.email"


def test_step_id_with_a_trailing_newline_is_refused() -> None:
    problems = problems_of({"steps": [step("a\n")]})
    assert problems[0].startswith("steps.0.id: String should match pattern")


def test_definitions_nested_too_deeply_are_definition_errors() -> None:
    """A 3,000-deep mapping or input_schema raised RecursionError; now each names its place."""
    deep: Any = "$.input.a"
    for _ in range(3000):
        deep = {"k": deep}
    with pytest.raises(DefinitionError) as info:
        parse_definition({"steps": [step("a", inputs={"x": deep})]})
    assert info.value.problems[0].startswith("steps.0.inputs.x.k.k")
    assert info.value.problems[0].endswith("nested more than 32 levels deep")
    schema: Any = {"type": "object"}
    for _ in range(3000):
        schema = {"type": "object", "properties": {"a": schema}}
    with pytest.raises(DefinitionError, match="input_schema: not a valid JSON Schema: nested too deeply"):
        parse_definition({"steps": [step("a")], "input_schema": schema})


def test_the_command_prints_the_stored_form_or_the_problems(tmp_path: Any) -> None:
    """`python -m supaflow_models.definitions FILE` is how a definition is prepared for an insert
    by hand: the database accepts only the normalised form."""
    import json
    import subprocess
    import sys

    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(AUDIO))
    bad.write_text(json.dumps({"steps": [step("a", depends_on=["ghost"])]}))
    ok = subprocess.run([sys.executable, "-m", "supaflow_models.definitions", str(good)],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and json.loads(ok.stdout) == normalise(AUDIO)
    refused = subprocess.run([sys.executable, "-m", "supaflow_models.definitions", str(bad)],
                             capture_output=True, text=True, check=False)
    assert refused.returncode == 1 and refused.stdout == ""
    assert "steps.0.depends_on: step 'a' depends on unknown step 'ghost'" in refused.stderr
