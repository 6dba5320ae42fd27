"""Reading tool calls out of model text, holding them back while streaming, and bounding the
JSON schemas that become grammars."""

import json

import pytest

from tandem.runtime.engine.formats import (ToolTextFilter, parse_tool_calls, schema_grammar, tool_call_schema)
from tandem.runtime.errors import InvalidSampling

NAMES = {"get_weather", "add"}


def test_hermes_blocks_give_every_call_and_the_text_around_them():
    text = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
            '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>')
    content, calls = parse_tool_calls(text, NAMES)
    assert content == "Let me check."
    assert calls == [{"name": "get_weather", "arguments": {"city": "Oslo"}}, {"name": "add", "arguments": {"a": 1, "b": 2}}]


def test_an_unclosed_block_at_the_end_is_still_a_call():
    _, calls = parse_tool_calls('<tool_call>{"name": "add", "arguments": {"a": 1}}', NAMES)
    assert calls == [{"name": "add", "arguments": {"a": 1}}]


def test_mistral_llama_and_bare_json_forms():
    assert parse_tool_calls('[TOOL_CALLS][{"name": "add", "arguments": {"a": 1}}]', NAMES)[1] == [
        {"name": "add", "arguments": {"a": 1}}]
    assert parse_tool_calls('<|python_tag|>{"name": "add", "parameters": {"a": 2}}', NAMES)[1] == [
        {"name": "add", "arguments": {"a": 2}}]
    assert parse_tool_calls('```json\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Rome\\"}"}\n```',
                            NAMES)[1] == [{"name": "get_weather", "arguments": {"city": "Rome"}}]


def test_json_that_names_no_known_tool_is_content():
    for text in ('{"name": "delete_everything", "arguments": {}}', '{"answer": 42}', "Just words.",
                 "<tool_call>not json</tool_call>"):
        assert parse_tool_calls(text, NAMES) == (text, [])


def _stream(pieces, hold=False):
    f = ToolTextFilter(hold)
    shown = "".join(f.feed(p) for p in pieces)
    return shown, f


def test_plain_text_streams_as_it_comes_except_a_possible_opener():
    shown, f = _stream(["Hello", " there", "<tool", "_call>", '{"name": "add"}'])
    assert shown == "Hello there" and f.held
    assert f.unshown() == '<tool_call>{"name": "add"}'
    shown, f = _stream(["Use <to", "ols wisely"])
    assert shown == "Use <tools wisely" and not f.held


def test_a_reply_opening_with_json_is_held_whole():
    shown, f = _stream(["  ", '{"na', 'me": 1}'])
    assert shown == "" and f.unshown() == '  {"name": 1}'
    shown, f = _stream(["anything"], hold=True)
    assert shown == "" and f.unshown() == "anything"


def test_tool_call_schema_names_one_tool_or_any():
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}},
             {"type": "function", "function": {"name": "get_weather"}}]
    assert tool_call_schema(tools, "add")["properties"]["name"] == {"const": "add"}
    assert len(tool_call_schema(tools)["anyOf"]) == 2
    with pytest.raises(InvalidSampling) as info:
        tool_call_schema(tools, "nope")
    assert info.value.param == "tool_choice"


def test_schemas_that_would_expand_without_bound_are_refused_with_the_field_to_fix():
    for schema in ({"type": "array", "minItems": 10**6}, {"type": "string", "maxLength": 10**9}):
        with pytest.raises(InvalidSampling) as info:
            schema_grammar(schema)
        assert info.value.param == "response_format" and "at most" in str(info.value)
    deep = {"type": "object"}
    for _ in range(200):
        deep = {"type": "object", "properties": {"x": deep}}
    with pytest.raises(InvalidSampling):
        schema_grammar(deep)
    with pytest.raises(InvalidSampling):
        schema_grammar({"$ref": "https://example.com/schema.json"})
    with pytest.raises(InvalidSampling):
        schema_grammar([1, 2], "format")


def test_a_schema_becomes_a_grammar_once():
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    first = schema_grammar(schema)
    assert "root ::=" in first and schema_grammar(json.loads(json.dumps(schema))) is first


def test_json_strings_in_a_grammar_exclude_raw_control_characters():
    grammar = schema_grammar({"type": "object", "properties": {"s": {"type": "string"}}})
    [char] = [line for line in grammar.splitlines() if line.startswith("char ::=")]
    assert "\\x00-\\x1F" in char


def _regex(rule: str):
    """A GBNF rule of literals, classes, groups, | and {m,n} as a Python regex (for checking)."""
    import re

    return re.compile(re.sub(r'"([^"]*)"', lambda m: re.escape(m.group(1)), rule).replace(" ", "") + r"\Z")


@pytest.mark.parametrize("lo, hi", [(0, 130), (-20, 5), (7, 1234), (1, 1), (-999, -3), (0, 9), (-5, 0), (95, 105)])
def test_an_integer_range_grammar_takes_exactly_the_range(lo, hi):
    from tandem.runtime.engine.formats import int_range_grammar

    rx = _regex(int_range_grammar(lo, hi))
    for n in range(lo - 50, hi + 51):
        assert bool(rx.match(str(n))) == (lo <= n <= hi), n
    assert not rx.match("007") and not rx.match("-0") and not rx.match("+1")


def test_a_half_open_integer_range():
    from tandem.runtime.engine.formats import int_range_grammar

    at_least = _regex(int_range_grammar(3, None))
    assert [n for n in range(-5, 200) if at_least.match(str(n))] == list(range(3, 200))
    assert at_least.match("123456789012345") and not at_least.match("1" * 16)
    at_most = _regex(int_range_grammar(None, -3))
    assert [n for n in range(-200, 5) if at_most.match(str(n))] == list(range(-200, -2))


def test_number_ranges_with_whole_bounds():
    from tandem.runtime.engine.formats import number_range_grammar

    rx = _regex(number_range_grammar(0, 1))
    for text, ok in (("0", True), ("0.25", True), ("1", True), ("1.0", True), ("1.5", False), ("2", False),
                     ("-0.5", False), ("0.123456", True)):
        assert bool(rx.match(text)) == ok, text
    with pytest.raises(InvalidSampling):
        number_range_grammar(0.5, 2)


def test_bounded_numbers_in_a_schema_are_enforced_and_regex_escapes_are_valid_gbnf():
    grammar = schema_grammar({"type": "object", "properties": {
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "email": {"type": "string", "pattern": "^[a-z]+@[a-z]+\\.com$"}}, "required": ["age", "email"]})
    assert '"1" [0-2] [0-9]' in grammar and '"\\."' not in grammar
    with pytest.raises(InvalidSampling):
        schema_grammar({"type": "integer", "minimum": 5, "maximum": 1})


@pytest.mark.parametrize("lo, hi", [(-10, 10), (None, 0), (-1, 1), (-5, -2), (0, 1), (3, None), (None, -4), (-3, None)])
def test_a_number_range_grammar_takes_exactly_the_range(lo, hi):
    from tandem.runtime.engine.formats import number_range_grammar

    rx = _regex(number_range_grammar(lo, hi))
    for tenths in range(-150, 151):
        for text in {f"{tenths / 10:g}", f"{tenths / 10:.1f}", f"{tenths / 10:.3f}"}:
            x = float(text)
            inside = (lo is None or x >= lo) and (hi is None or x <= hi)
            assert bool(rx.match(text)) == inside, (text, lo, hi)


def test_pattern_escapes_become_classes_or_codes():
    def root(pattern):
        return [line for line in schema_grammar({"type": "string", "pattern": pattern}).splitlines()
                if line.startswith("root")][0]

    digits = schema_grammar({"type": "string", "pattern": "^[A-Z]{2}-\\d{3}$"})
    assert '"-" root-2 root-2 root-2' in digits and "root-2 ::= [0-9]" in digits  # repeats the digit, not "-\\d"
    assert "[a-zA-Z0-9_.+-]+" in root("^[\\w.+-]+$") and "[\\x2E]" in root("^a\\.b$")
    assert "[^0-9]" in schema_grammar({"type": "string", "pattern": "^\\D$"})
    assert "[a\\x2Dz]" in root("^[a\\-z]$")
    with pytest.raises(InvalidSampling):
        root("^\\bword$")
