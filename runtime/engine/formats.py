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


# --- numeric ranges: the converter ignores minimum and maximum, so Tandem writes those rules
MAX_DIGITS = 15  # an unbounded side of a range stops here: beyond what a reply ever needs


def _fill_nines(n: int, k: int) -> int:
    s = str(n)
    return int((s[:-k] if k < len(s) else "") + "9" * k)


def _digit_ranges(lo: int, hi: int) -> list[tuple[int, int]]:
    """[lo, hi] (0 <= lo <= hi) split into ranges whose numbers have the same length and whose
    digits each span a contiguous set: each is then a sequence of digit classes."""
    stops = {hi}
    k = 1
    stop = _fill_nines(lo, k)
    while lo <= stop < hi:
        stops.add(stop)
        k += 1
        stop = _fill_nines(lo, k)
    k = 1
    stop = (hi + 1) - (hi + 1) % 10**k - 1
    while lo < stop <= hi:
        stops.add(stop)
        k += 1
        stop = (hi + 1) - (hi + 1) % 10**k - 1
    out, start = [], lo
    for stop in sorted(stops):
        out.append((start, stop))
        start = stop + 1
    return out


def _range_rule(lo: int, hi: int) -> str:
    """GBNF for the decimal numbers in [lo, hi], 0 <= lo <= hi."""
    parts = []
    for a, b in _digit_ranges(lo, hi):
        seq = [f'"{x}"' if x == y else f"[{x}-{y}]" for x, y in zip(str(a), str(b))]
        parts.append(" ".join(seq))
    return "(" + " | ".join(parts) + ")"


def _at_least(lo: int) -> str:
    """GBNF for the decimal numbers >= lo >= 0 (up to MAX_DIGITS digits)."""
    n = len(str(lo))
    longer = f"[1-9] [0-9]{{{n},{MAX_DIGITS - 1}}}" if n < MAX_DIGITS else None
    return "(" + " | ".join(x for x in (_range_rule(lo, 10**n - 1), longer) if x) + ")"


def int_range_grammar(lo: int | None, hi: int | None) -> str:
    """GBNF for the JSON integers in [lo, hi] (None: unbounded on that side, up to MAX_DIGITS)."""
    top = 10**MAX_DIGITS - 1
    if lo is not None and hi is not None and lo > hi:
        raise InvalidSampling("The JSON schema's minimum is above its maximum: no integer fits.", "response_format")
    _check_magnitude(lo, hi)
    parts = []
    if lo is None or lo < 0:  # the negative side, mirrored: -x with x in [max(1, -hi), -lo]
        small = 1 if hi is None or hi >= 0 else -hi
        parts.append('"-" ' + (_at_least(small) if lo is None else _range_rule(small, min(-lo, top))))
    if hi is None or hi >= 0:
        start = 0 if lo is None or lo < 0 else lo
        parts.append(_at_least(start) if hi is None else _range_rule(start, min(hi, top)))
    return "(" + " | ".join(parts) + ")"


def _bounds(schema: dict, integer: bool) -> tuple[float | None, float | None]:
    import math

    lo, hi = schema.get("minimum"), schema.get("maximum")
    ex_lo, ex_hi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    for name, v in (("minimum", lo), ("maximum", hi), ("exclusiveMinimum", ex_lo), ("exclusiveMaximum", ex_hi)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            raise InvalidSampling(f"The JSON schema's {name} must be a number.", "response_format")
    if integer:
        lo = None if lo is None else math.ceil(lo)
        hi = None if hi is None else math.floor(hi)
        if ex_lo is not None:
            lo = max(lo, math.floor(ex_lo) + 1) if lo is not None else math.floor(ex_lo) + 1
        if ex_hi is not None:
            hi = min(hi, math.ceil(ex_hi) - 1) if hi is not None else math.ceil(ex_hi) - 1
        return lo, hi
    if ex_lo is not None or ex_hi is not None:
        raise InvalidSampling("exclusiveMinimum and exclusiveMaximum on a number cannot be enforced; use minimum "
                              "and maximum, or an integer.", "response_format")
    return lo, hi


def number_range_grammar(lo: float | None, hi: float | None) -> str:
    """GBNF for JSON numbers in [lo, hi] where each bound is a whole number or missing. Each sign
    is built on its own: x >= 0 is a whole part and any fraction up to hi; x < 0 is "-" and a
    magnitude from the smallest allowed (-hi, or 0) up to -lo."""
    import math

    if (lo is not None and lo != math.floor(lo)) or (hi is not None and hi != math.floor(hi)):
        raise InvalidSampling("Tandem enforces minimum and maximum on numbers only when they are whole numbers; "
                              "round them, or use an integer.", "response_format")
    lo = None if lo is None else int(lo)
    hi = None if hi is None else int(hi)
    if lo is not None and hi is not None and lo > hi:
        raise InvalidSampling("The JSON schema's minimum is above its maximum: no number fits.", "response_format")
    _check_magnitude(lo, hi)
    frac = '("." [0-9]{1,6})?'
    zeros = '("." "0"{1,6})?'

    def side(low: int, high: int | None) -> list[str]:  # magnitudes in [low, high]
        if high is None:
            return [f"{_at_least(low)} {frac}"]
        parts = [f"{_range_rule(low, high - 1)} {frac}"] if low <= high - 1 else []
        return parts + [f'"{high}" {zeros}']

    parts = []
    if hi is None or hi >= 0:
        parts += side(0 if lo is None or lo < 0 else lo, hi)
    if lo is None or lo < 0:
        parts += [f'"-" {p}' for p in side(0 if hi is None or hi >= 0 else -hi, None if lo is None else -lo)]
    return "(" + " | ".join(parts) + ")"


def _check_magnitude(lo: int | None, hi: int | None) -> None:
    top = 10**MAX_DIGITS - 1
    if (lo is not None and lo > top) or (hi is not None and hi < -top):
        raise InvalidSampling(f"The JSON schema's range lies beyond {MAX_DIGITS} digits; Tandem enforces smaller "
                              "numbers.", "response_format")


_REGEX_CLASSES = {"d": "0-9", "w": "a-zA-Z0-9_", "s": " \\t\\n\\r"}


def _plain_pattern(pattern: str) -> str:
    """A regex with \\d, \\w, \\s (and their negations) written as classes, and escaped punctuation
    as a one-character class: the converter takes those escapes for literal text (so `-\\d{3}` would
    repeat "-\\d"), but classes it handles."""
    out, i, n, in_class = [], 0, len(pattern), False
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            e = pattern[i + 1]
            i += 2
            if e.lower() in _REGEX_CLASSES:
                if in_class and e.isupper():
                    raise InvalidSampling(f"The JSON schema's pattern uses \\{e} inside [...], which Tandem cannot "
                                          "enforce; write the class out.", "response_format")
                body = _REGEX_CLASSES[e.lower()]
                out.append(body if in_class else f"[{'^' if e.isupper() else ''}{body}]")
            elif not in_class and not e.isalnum() and e.isascii():
                out.append(f"[\\{e}]")
            else:
                out.append("\\" + e)
            continue
        if c == "[" and not in_class:
            in_class = True
        elif c == "]" and in_class and out and out[-1] != "[" and out[-1] != "[^":
            in_class = False
        out.append(c)
        i += 1
    return "".join(out)


def _ranges(schema, found: list[str], depth: int = 0):
    """The schema with each bounded integer or number replaced by a placeholder constant, and
    the rules for them in `found` (placeholder i is found[i])."""
    if isinstance(schema, list):
        return [_ranges(x, found, depth + 1) for x in schema]
    if not isinstance(schema, dict):
        return schema
    kind = schema.get("type")
    bounded = any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"))
    if bounded and kind in ("integer", "number"):
        lo, hi = _bounds(schema, kind == "integer")
        rule = int_range_grammar(lo, hi) if kind == "integer" else number_range_grammar(lo, hi)
        found.append(rule)
        return {"const": _placeholder(len(found) - 1)}
    if isinstance(schema.get("pattern"), str):
        schema = {**schema, "pattern": _plain_pattern(schema["pattern"])}
    return {k: (_ranges(v, found, depth + 1) if k not in ("const", "enum", "default", "examples", "pattern") else v)
            for k, v in schema.items()}


def _placeholder(i: int) -> str:
    return f"@@tandem-range-{i}@@"


_CLASS_ESCAPES = {"d": "0-9", "w": "a-zA-Z0-9_", "s": " \\t\\n\\r"}
_GBNF_ESCAPES = set('xuUtnr"\\[]')


def _fix_escapes(grammar: str) -> str:
    """The converter copies a pattern's regex escapes into GBNF literals and classes, where
    llama.cpp rejects most of them: \\d, \\w, \\s (and \\D, \\W, \\S in a literal)
    become classes, an escaped punctuation mark its \\xHH code; anything else is refused."""
    out, i, n = [], 0, len(grammar)
    state = "rule"  # rule, literal ("..."), class ([...])
    while i < n:
        c = grammar[i]
        if c == "\\" and i + 1 < n and state != "rule":
            e = grammar[i + 1]
            i += 2
            if e in _GBNF_ESCAPES:
                out.append("\\" + e)
            elif e in _CLASS_ESCAPES and state == "class":
                out.append(_CLASS_ESCAPES[e])
            elif e.lower() in _CLASS_ESCAPES and state == "literal":
                neg = "^" if e.isupper() else ""
                out.append(f'" [{neg}{_CLASS_ESCAPES[e.lower()]}] "')
            elif not e.isalnum() and e.isascii():
                out.append(f"\\x{ord(e):02X}")
            else:
                raise InvalidSampling(f"The JSON schema's pattern uses \\{e}, which Tandem cannot enforce; "
                                      "write it with character classes.", "response_format")
            continue
        if state == "rule" and c == '"':
            state = "literal"
        elif state == "rule" and c == "[":
            state = "class"
        elif state == "literal" and c == '"':
            state = "rule"
        elif state == "class" and c == "]":
            state = "rule"
        out.append(c)
        i += 1
    return "".join(out).replace(' "" ', " ")


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
        ranges: list[str] = []
        prepared = _ranges(schema, ranges)
        grammar = json_schema_to_gbnf(json.dumps(prepared))
        for i, rule in enumerate(ranges):  # the placeholder's literal, as the converter wrote it
            literal = json.dumps(json.dumps(_placeholder(i)))
            if literal not in grammar:
                raise InvalidSampling("The JSON schema's numeric ranges could not be enforced; simplify it.", param)
            grammar = grammar.replace(literal, rule)
        grammar = _fix_escapes(grammar)
    except InvalidSampling as err:
        raise InvalidSampling(str(err), param) from None
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
