"""What a reply must look like: JSON Schema to llama.cpp grammars, and tool calls out of text.

Grammars come from llama-cpp-python's JSON-Schema converter; a schema is bounded first (sizes
that would expand into a huge grammar are refused) and the conversion's own failures become
InvalidSampling with the request field to fix. Tool calls are read the way the common chat
templates ask models to write them: `<tool_call>{...}</tool_call>` (Hermes, Qwen), `[TOOL_CALLS][...]`
(Mistral), `<|python_tag|>{...}` or a bare JSON object naming a tool (Llama 3.x).
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict

from tandem.runtime.errors import InvalidSampling

MAX_REPEAT = 1000  # minItems, maxLength ... above this expand into grammars too big to be useful
MAX_GRAMMAR_CHARS = 256 * 1024
MAX_SCHEMA_DEPTH = 64
_CACHE_SIZE = 64
_cache: OrderedDict[str, str] = OrderedDict()
_cache_lock = threading.Lock()

_BOUNDED = ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties")


def _check(schema, depth: int = 0, param: str = "response_format") -> None:
    if depth > MAX_SCHEMA_DEPTH:
        raise InvalidSampling(f"The JSON schema nests deeper than {MAX_SCHEMA_DEPTH} levels; flatten it.", param)
    if isinstance(schema, dict):
        for key in _BOUNDED:
            value = schema.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > MAX_REPEAT:
                raise InvalidSampling(f"The JSON schema's {key} is {value}; Tandem enforces at most {MAX_REPEAT}.", param)
        for value in schema.values():
            _check(value, depth + 1, param)
    elif isinstance(schema, list):
        for value in schema:
            _check(value, depth + 1, param)


def schema_grammar(schema: dict | bool | None, param: str = "response_format") -> str:
    """The GBNF grammar for JSON that validates against `schema` (None: any JSON object)."""
    if schema is None or schema is True or schema == {}:
        schema = {"type": "object"}
    if not isinstance(schema, dict):
        raise InvalidSampling("The JSON schema must be an object.", param)
    _check(schema, param=param)
    key = json.dumps(schema, sort_keys=True)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        grammar = json_schema_to_gbnf(json.dumps(schema))
    except RecursionError:
        raise InvalidSampling("The JSON schema nests too deeply to enforce; flatten it.", param) from None
    except Exception as err:  # the converter's own refusals: unsupported keywords, bad $ref ...
        raise InvalidSampling(f"The JSON schema cannot be enforced: {err or type(err).__name__}. "
                              "Check it, or simplify it.", param) from None
    # JSON strings hold no raw control characters; this converter's `char` rule lets them through
    grammar = grammar.replace('char ::= [^"\\\\] |', 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |')
    if len(grammar) > MAX_GRAMMAR_CHARS:
        raise InvalidSampling("The JSON schema expands into a grammar too large to enforce; simplify it.", param)
    with _cache_lock:
        _cache[key] = grammar
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return grammar


def tool_call_schema(tools: list[dict], name: str | None = None) -> dict:
    """A schema for one call {"name", "arguments"} of one of `tools` (OpenAI function tools), or
    of the tool `name` only."""
    options = []
    for tool in tools:
        fn = tool["function"]
        if name is not None and fn["name"] != name:
            continue
        params = fn.get("parameters") or {"type": "object"}
        options.append({"type": "object", "properties": {"name": {"const": fn["name"]}, "arguments": params},
                        "required": ["name", "arguments"], "additionalProperties": False})
    if not options:
        raise InvalidSampling(f"tool_choice names {name!r}, which is not among the tools.", "tool_choice")
    return options[0] if len(options) == 1 else {"anyOf": options}


# --- tool calls in text
OPENERS = ("<tool_call>", "[TOOL_CALLS]", "<|python_tag|>")
_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)


def _call(obj, names: set[str]) -> dict | None:
    """{"name", "arguments"} when obj is a call of a known tool."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict):  # {"type": "function", "function": {...}}
        obj = obj["function"]
    name = obj.get("name")
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(name, str) or name not in names or not isinstance(args, dict):
        return None
    return {"name": name, "arguments": args}


def _calls(value, names: set[str]) -> list[dict] | None:
    items = value if isinstance(value, list) else [value]
    calls = [_call(x, names) for x in items]
    return calls if calls and all(calls) else None


def _json(text: str):
    text = text.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        return json.loads(text)
    except ValueError:
        return None


def parse_tool_calls(text: str, names: set[str]) -> tuple[str, list[dict]]:
    """(the text outside the calls, the calls as {"name", "arguments": dict}); no calls when the
    text holds none of a tool in `names`."""
    if "<tool_call>" in text:
        calls = [_calls(_json(m.group(1)), names) for m in _BLOCK.finditer(text)]
        if calls and all(calls):
            return _BLOCK.sub("", text).strip(), [c for group in calls for c in group]
    for opener in ("[TOOL_CALLS]", "<|python_tag|>"):
        if opener in text:
            before, _, after = text.partition(opener)
            calls = _calls(_json(after), names)
            if calls:
                return before.strip(), calls
    calls = _calls(_json(text), names)
    if calls:
        return "", calls
    return text, []


class ToolTextFilter:
    """Streams a reply's text while holding back what may be a tool call, so that a client never
    sees a call's markup as content. feed() returns the text safe to show now."""

    def __init__(self, hold: bool = False):
        self.text = ""
        self.shown = 0
        self.held = hold  # a call (or bare JSON that may be one) has started: hold the rest

    def feed(self, piece: str) -> str:
        self.text += piece
        if self.held:
            return ""
        rest = self.text[self.shown:]
        if self.shown == 0:
            stripped = rest.lstrip()
            if not stripped:
                return ""
            if stripped[0] in "{[`":
                self.held = True
                return ""
        cut = min((i for i in (rest.find(o) for o in OPENERS) if i >= 0), default=-1)
        if cut >= 0:
            self.held = True
        else:  # keep back a tail that may be the start of an opener
            cut = len(rest)
            for opener in OPENERS:
                for n in range(min(len(opener) - 1, len(rest)), 0, -1):
                    if rest.endswith(opener[:n]):
                        cut = min(cut, len(rest) - n)
                        break
        out = rest[:cut]
        self.shown += len(out)
        return out

    def unshown(self) -> str:
        return self.text[self.shown:]
