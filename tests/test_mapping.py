"""The mapping language: what expressions and templates resolve to, and what is refused."""

from __future__ import annotations

from typing import Any

import pytest

from supaflow_models.mapping import MappingError, resolve, step_references, validate

CONTEXT: dict[str, Any] = {
    "input": {
        "audio_url": "https://example.com/a.mp3",
        "count": 3,
        "ratio": 0.5,
        "flag": False,
        "nothing": None,
        "name": "Zoë",
        "items": [{"url": "u0"}, {"url": "u1", "tags": ["x", "y"]}],
        "nested": {"deep": {"er": "value"}},
        "with-dash_and_1": "ok",
    },
    "steps": {
        "download": {"output": {"bucket": "b", "key": "k", "size": 10}},
        "split": {"output": ["first", "second"]},
        "maybe": {"output": None},
    },
}


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("$.input.audio_url", "https://example.com/a.mp3"),
        ("$.input.nested.deep.er", "value"),
        ("$.input.items[1].url", "u1"),
        ("$.input.items[1].tags[0]", "x"),
        ("$.input.with-dash_and_1", "ok"),
        ("$.steps.download.output.size", 10),
        ("$.steps.split.output[1]", "second"),
        ("$.steps.maybe.output", None),
    ],
)
def test_expression_reads_nested_paths_and_indices(expression: str, expected: Any) -> None:
    assert resolve(expression, CONTEXT) == expected


def test_expression_keeps_the_json_type() -> None:
    out = resolve(
        {
            "int": "$.input.count",
            "float": "$.input.ratio",
            "bool": "$.input.flag",
            "null": "$.input.nothing",
            "list": "$.input.items",
            "object": "$.steps.download.output",
        },
        CONTEXT,
    )
    assert out["int"] == 3 and type(out["int"]) is int
    assert out["float"] == 0.5 and type(out["float"]) is float
    assert out["bool"] is False
    assert out["null"] is None
    assert out["list"] == CONTEXT["input"]["items"]
    assert out["object"] == {"bucket": "b", "key": "k", "size": 10}


def test_root_expressions_are_the_whole_value() -> None:
    assert resolve("$.input", CONTEXT) == CONTEXT["input"]
    assert resolve("$.steps.split.output", CONTEXT) == ["first", "second"]


def test_dicts_and_lists_are_walked_and_literals_kept() -> None:
    mapping = {
        "body": {"files": ["$.input.items[0].url", "literal", 7, None, True]},
        "$.input.count": "key is not an expression",
        "price": "$5",
        "money": "5 $.input.count",
    }
    assert resolve(mapping, CONTEXT) == {
        "body": {"files": ["u0", "literal", 7, None, True]},
        "$.input.count": "key is not an expression",
        "price": "$5",
        "money": "5 $.input.count",
    }


def test_templates_render_strings_as_is_and_other_values_as_json() -> None:
    assert resolve("Hello {{ $.input.name }}!", CONTEXT) == "Hello Zoë!"
    assert resolve("{{$.input.count}} items", CONTEXT) == "3 items"
    assert resolve("n={{ $.input.count }}", CONTEXT) == "n=3"
    assert resolve("{{ $.input.flag }}/{{ $.input.nothing }}", CONTEXT) == "false/null"
    assert resolve("tags: {{ $.input.items[1].tags }}", CONTEXT) == 'tags: ["x", "y"]'
    assert (
        resolve("{{ $.steps.download.output }}", CONTEXT)
        == '{"bucket": "b", "key": "k", "size": 10}'
    )


def test_a_lone_template_is_a_string_even_for_numbers() -> None:
    assert resolve("{{ $.input.count }}", CONTEXT) == "3"
    assert resolve({"n": ["{{ $.input.ratio }}"]}, CONTEXT) == {"n": ["0.5"]}


def test_templates_may_span_lines() -> None:
    assert resolve("a\n{{\n  $.input.count\n}}\nb", CONTEXT) == "a\n3\nb"


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("$.input.missing", "$.input.missing: no key 'missing'"),
        ("$.input.nested.deep.nope", "$.input.nested.deep.nope: no key 'nope'"),
        ("$.input.items[2]", "$.input.items[2]: no index [2] (the list has 2 items)"),
        ("$.input.count.x", "$.input.count.x: cannot take key 'x' of a number"),
        ("$.input.nested[0]", "$.input.nested[0]: cannot take index [0] of an object"),
        ("$.input.items.url", "$.input.items.url: cannot take key 'url' of a list"),
        ("$.input.nothing.x", "$.input.nothing.x: cannot take key 'x' of null"),
        ("$.steps.absent.output", "$.steps.absent.output: no output for step 'absent'"),
        ("$.steps.maybe.output.x", "$.steps.maybe.output.x: cannot take key 'x' of null"),
    ],
)
def test_missing_values_raise_naming_the_expression(expression: str, message: str) -> None:
    with pytest.raises(MappingError) as info:
        resolve({"wrapper": [expression]}, CONTEXT)
    assert str(info.value) == message


def test_missing_value_inside_a_template_raises() -> None:
    with pytest.raises(MappingError, match=r"^\$\.input\.audio: no key 'audio'$"):
        resolve("get {{ $.input.audio }}", CONTEXT)


def test_mapping_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="no key"):
        resolve("$.input.nope", CONTEXT)


def test_missing_input_in_context() -> None:
    with pytest.raises(MappingError, match="no input"):
        resolve("$.input.x", {"steps": {}})


@pytest.mark.parametrize(
    "good",
    [
        "$.input",
        "$.input.a",
        "$.input.a-b_c.9",
        "$.input.items[0]",
        "$.input.items[10].x[2][3]",
        "$.steps.step-1.output",
        "$.steps.s.output[0].field",
        "plain text",
        "costs $.50",
        "{ not a template }",
        "a }} b",
        "x {{ $.input.a }} y {{$.steps.s.output.b}}",
        {"a": ["$.input.a", 1, None, {"b": "$.steps.s.output"}]},
        42,
        None,
    ],
)
def test_validate_accepts_well_formed_mappings(good: Any) -> None:
    validate(good)


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ("$.foo.x", "'$.foo.x' is not a valid mapping expression"),
        ("$.inputs.x", "expected $.input.<path>"),
        ("$.", "not a valid mapping expression"),
        ("$.steps.a.result", "$.steps.<step_id>.output"),
        ("$.steps.a", "$.steps.<step_id>.output"),
        ("$.steps..output", "$.steps.<step_id>.output"),
        ("$.input..x", "a path is dot-separated"),
        ("$.input.x.", "a path is dot-separated"),
        ("$.input.x[a]", "a path is dot-separated"),
        ("$.input.x[-1]", "a path is dot-separated"),
        ("$.input.a b", "a path is dot-separated"),
        ("$.input.x and more", "a path is dot-separated"),
        ("hello {{ $.input.x", "'{{' is not closed"),
        ("{{ $.input.x }} and {{ $.input.y", "'{{' is not closed"),
        ("hello {{ name }}", "'name' is not a valid mapping expression"),
        ("hello {{ }}", "'' is not a valid mapping expression"),
        ("{{ $.foo }}", "'$.foo' is not a valid mapping expression"),
    ],
)
def test_validate_rejects_malformed_expressions(bad: str, fragment: str) -> None:
    with pytest.raises(MappingError) as info:
        validate(bad)
    assert fragment in str(info.value)


def test_validate_names_where_in_the_mapping() -> None:
    with pytest.raises(MappingError) as info:
        validate({"body": {"items": ["ok", "$.input..x"]}})
    assert info.value.where == ("body", "items", 1)
    assert str(info.value).startswith("at body.items[1]: '$.input..x' is not")


def test_resolve_refuses_malformed_strings_instead_of_passing_them_through() -> None:
    with pytest.raises(MappingError, match="not a valid mapping expression"):
        resolve({"url": "$.inptu.audio_url"}, CONTEXT)
    with pytest.raises(MappingError, match="not closed"):
        resolve("{{ $.input.name", CONTEXT)


def test_step_references() -> None:
    mapping = {
        "a": "$.steps.download.output.key",
        "b": ["{{ $.steps.split.output[0] }} and {{ $.steps.other-step.output }}"],
        "c": "$.input.audio_url",
        "d": "mentions $.steps.fake.output but is a literal",
        "e": {"f": "$.steps.download.output"},
    }
    assert step_references(mapping) == {"download", "split", "other-step"}
    assert step_references("$.input.x") == set()
    assert step_references(None) == set()


def test_step_references_rejects_malformed() -> None:
    with pytest.raises(MappingError):
        step_references({"x": "$.steps.a.outputs"})


@pytest.mark.timeout(20)
def test_templates_parse_in_linear_time() -> None:
    """`"{{" + N spaces + "x"` took cubic time with the old regex (N=4,000: 33 s); a
    single scan takes milliseconds for N=1,000,000, so the timeout is the assertion."""
    for text in ("{{" + " " * 1_000_000 + "x", "{{ $.input.a " * 200_000,
                 "{{" * 500_000, "{{ $.input.a }}" * 100_000 + "{{"):
        with pytest.raises(MappingError, match=r"not closed|not a valid"):
            validate({"t": text})
    assert len(resolve("{{ $.input.a }}" * 100_000, {"input": {"a": "z"}})) == 100_000


def test_a_mapping_nested_too_deeply_is_a_mapping_error() -> None:
    """3,000 levels once raised RecursionError; past MAX_DEPTH is a clear error."""
    deep: Any = "$.input.a"
    for _ in range(3000):
        deep = {"k": [deep]}
    with pytest.raises(MappingError, match="nested more than 32 levels deep"):
        validate(deep)
    shallow: Any = "$.input.a"
    for _ in range(16):
        shallow = {"k": [shallow]}
    validate(shallow)  # 32 levels: at the limit, accepted
