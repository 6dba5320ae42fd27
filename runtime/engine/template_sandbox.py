"""A jinja2 sandbox for untrusted chat templates that also bounds time, steps, output and memory.

Templates come from the GGUF file and are untrusted. They are rendered in jinja2's
ImmutableSandboxedEnvironment (the fix for CVE-2024-34359, as llama-cpp-python's
Jinja2ChatFormatter does) with the same settings, filters and variables as that formatter, so a
normal template renders exactly as it did there. The sandbox keeps a template away from Python's
internals but not from wasting time and memory (two nested `range(100000)` loops run for hours;
`'x' * 10**10` is folded into a 10 GB constant while the template compiles), so this sandbox also
bounds the work:

- nothing is evaluated while compiling (no constant folding), and the template's size and node
  count are capped, so compiling is quick;
- every loop iteration, call, filter, test, operator, attribute lookup and output counts as a
  step; the steps are capped, and every 256 steps the render's CPU time (and, as a backstop, its
  wall time) is checked against a deadline;
- every value a template makes (strings, lists, numbers) is checked before it is made when its
  size can be foreseen (repetition, padding, replacing, joining, formatting, JSON indentation),
  and after it is made otherwise, against the output limit; all bytes made and written are
  counted against a total;
- the output is capped relative to the conversation's size, calls cannot nest deeper than a few
  dozen levels, and `range` is capped at jinja2's MAX_RANGE.

A template that breaks a limit raises UnsafeChatTemplate naming the limit; at load a trial render
does the same, so such a model refuses to load. Rendering stays in this thread (no subprocess):
the checks are a few attribute lookups per step, a render of a normal template takes about a
millisecond, and every request renders at least once. llama-cpp-python compiles the template
again, with constant folding, when a Llama is created: limit_llama_templates() makes it use these
limits too, and must run before any Llama is created.
"""

from __future__ import annotations

import re
import threading
import time
from datetime import datetime

from tandem.runtime.errors import ChatTemplateError, UnsafeChatTemplate

# --- the limits (real templates stay far below every one of them)
MAX_TEMPLATE_CHARS = 128 * 1024  # the largest real templates are a few tens of KB
MAX_TEMPLATE_NODES = 25_000  # compiling costs about 50 us a node: this bounds it to about a second
RENDER_CPU_S = 1.0  # a normal render takes about a millisecond
RENDER_WALL_S = 5.0  # for when the thread hardly gets the CPU: the reply must not wait forever
MAX_STEPS = 1_000_000
STEPS_PER_MESSAGE = 1_000
OUTPUT_FLOOR = 4 << 20  # bytes a template may write beyond OUTPUT_PER_INPUT x the conversation
OUTPUT_PER_INPUT = 4
MADE_PER_OUTPUT = 16  # bytes made and written in all, as a multiple of the output limit
MAX_CALL_DEPTH = 64  # macros and recursive loops; Python's own limit would come at about 100
MAX_INT_BITS = 8192
CLOCK_EVERY = 256  # steps between two looks at the clock
_ATOM = 8  # what a number, a reference or an opaque object counts for in a value's size
# str() or JSON of a value is about its size, up to a few times it with escapes: an estimate that
# falls short by such a factor is caught right after, when what was made is checked
_REPR = 2
def _raise_exception(message: str):
    raise ValueError(message)


def _strftime_now(f: str) -> str:
    return datetime.now().strftime(f)


def template_variables(messages: list[dict], eos: str, bos: str, generation_prompt: bool, **extra) -> dict:
    """What llama-cpp-python's Jinja2ChatFormatter passes to a template."""
    return dict(messages=messages, eos_token=eos, bos_token=bos, raise_exception=_raise_exception,
                add_generation_prompt=generation_prompt, functions=None, function_call=None, tools=None,
                tool_choice=None, strftime_now=_strftime_now, **extra)


# --- the limited sandbox
class _LimitExceeded(Exception):
    """Raised inside a render; never a TypeError or LookupError, which jinja2 turns into Undefined."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


def _size_text(n: int) -> str:
    if n >= 1 << 20:
        return f"{n / (1 << 20):,.1f} MiB"
    if n >= 1 << 10:
        return f"{n / (1 << 10):,.1f} KiB"
    return f"{n:,} bytes"


class _Budget:
    """What one render may still do. Lives in a thread-local while the render runs."""

    __slots__ = ("steps", "max_steps", "made", "max_made", "max_value", "depth", "next_clock",
                 "cpu_end", "wall_end", "sizes")

    def __init__(self, max_value: int, max_steps: int):
        self.steps, self.max_steps = 0, max_steps
        self.made, self.max_made = 0, max_value * MADE_PER_OUTPUT
        self.max_value = max_value
        self.depth = 0
        self.next_clock = CLOCK_EVERY
        self.cpu_end = time.thread_time() + RENDER_CPU_S
        self.wall_end = time.monotonic() + RENDER_WALL_S
        # sizes of containers already measured, with the container itself so that its id stays
        # its own while the render runs (templates cannot change a list or a dict in place)
        self.sizes: dict[int, tuple[object, int]] = {}

    def clock(self) -> None:
        if self.steps > self.max_steps:
            raise _LimitExceeded(f"took more than {self.max_steps:,} steps (loop iterations, calls, lookups)")
        self.next_clock = self.steps + CLOCK_EVERY
        if time.thread_time() > self.cpu_end:
            raise _LimitExceeded(f"ran for more than {RENDER_CPU_S:g} s of CPU time")
        if time.monotonic() > self.wall_end:
            raise _LimitExceeded(f"ran for more than {RENDER_WALL_S:g} s")

    def charge(self, n: int) -> None:
        self.made += n
        if self.made > self.max_made:
            raise _LimitExceeded(f"made more than {_size_text(self.max_made)} of text and values in all")

    def value(self, n: int, what: str = "a value") -> None:
        if n > self.max_value:
            raise _LimitExceeded(f"tried to make {what} of {_size_text(n)} (the limit is {_size_text(self.max_value)})")


def _static_text(body: list) -> int:
    """Bytes of template text a block writes each time it runs, leaving out the blocks inside it
    that charge for themselves (loops, macros, call blocks)."""
    from jinja2 import nodes

    total, stack = 0, list(body)
    while stack:
        n = stack.pop()
        if isinstance(n, nodes.TemplateData):
            total += len(n.data)
        elif isinstance(n, nodes.For):
            stack.extend(n.else_)  # runs once, with the block around it
        elif not isinstance(n, (nodes.Macro, nodes.CallBlock)):
            stack.extend(n.iter_child_nodes())
    return total


def _instrument(template) -> None:
    """Count loop iterations, and charge a loop's, macro's or call block's own text each time it
    runs: a set block or a macro collects its output in a list that nothing else would measure."""
    from jinja2 import nodes

    def call(name: str, args: list, lineno: int):
        return nodes.Call(nodes.EnvironmentAttribute(name, lineno=lineno), args, [], None, None, lineno=lineno)

    for node in list(template.find_all((nodes.For, nodes.Macro, nodes.CallBlock))):
        if isinstance(node, nodes.For):
            node.iter = call("tandem_loop", [node.iter], node.lineno)
        weight = _static_text(node.body)
        if weight:
            node.body.insert(0, nodes.Output([call("tandem_charge", [nodes.Const(weight)], node.lineno)],
                                             lineno=node.lineno))
    template.set_environment(template.environment)


def _make_generator_class():
    from jinja2.compiler import CodeGenerator

    class LimitedCodeGenerator(CodeGenerator):
        """Routes `~` and list, tuple and dict literals through the environment, where their
        sizes are checked (a literal can repeat a large value as often as the template likes)."""

        def visit_Concat(self, node, frame) -> None:
            if frame.eval_ctx.volatile:  # as jinja2's own code generator writes it
                join = "(markup_join if context.eval_ctx.volatile else str_join)"
            elif frame.eval_ctx.autoescape:
                join = "markup_join"
            else:
                join = "str_join"
            self.write(f"environment.tandem_concat({join}, (")
            for arg in node.nodes:
                self.visit(arg, frame)
                self.write(", ")
            self.write("))")

        def _made(self, visit, node, frame) -> None:
            self.write("environment.tandem_made(")
            visit(node, frame)
            self.write(")")

        def visit_List(self, node, frame) -> None:
            self._made(super().visit_List, node, frame)

        def visit_Dict(self, node, frame) -> None:
            self._made(super().visit_Dict, node, frame)

        def visit_Tuple(self, node, frame) -> None:
            if node.ctx != "load":  # an assignment target, not a value
                return super().visit_Tuple(node, frame)
            self._made(super().visit_Tuple, node, frame)

    return LimitedCodeGenerator


_ENV_CLASS = None
_env_lock = threading.Lock()


def _environment_class():
    """Built on first use: jinja2 and llama_cpp are imported only by what renders templates."""
    global _ENV_CLASS
    with _env_lock:
        if _ENV_CLASS is None:
            _ENV_CLASS = _make_environment_class()
        return _ENV_CLASS


def _make_environment_class():
    import types

    import jinja2
    import jinja2.ext
    from jinja2 import pass_context
    from functools import update_wrapper

    from jinja2.sandbox import (MAX_RANGE, ImmutableSandboxedEnvironment, SandboxedEscapeFormatter,
                                SandboxedFormatter, safe_range)
    from markupsafe import Markup
    from jinja2.runtime import LoopContext
    from jinja2.utils import Namespace, _PassArg
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    # the llama-cpp-python class as it was imported, before limit_llama_templates() replaced it
    base_formatter = getattr(Jinja2ChatFormatter, "tandem_original", Jinja2ChatFormatter)
    generator_class = _make_generator_class()
    containers = (list, tuple, dict, set, frozenset, Namespace)
    sequences = (str, bytes, bytearray, list, tuple)  # what * repeats and + joins
    format_digits = re.compile(r"\d+")
    format_reuse = re.compile(r"\{[\w]|%\(")  # fields that can name the same argument again
    format_repr = re.compile(r"[%!][^%!a-zA-Z]*[ra]")  # %r, %a, !r, !a: up to 10 bytes a character
    str_methods = {"center", "ljust", "rjust", "zfill", "expandtabs", "replace", "join", "translate"}

    def spec_width(spec: str) -> int:
        total = 0
        for m in format_digits.finditer(spec):
            d = m.group()
            if len(d) > 12:
                return 1 << 62
            total += int(d)
        return total

    class FieldChecks:
        def format_field(self, value, format_spec):
            env = self._env
            env.step()
            env.check_estimate(spec_width(format_spec) + 10 * env.size(value), "a formatted text")
            return super().format_field(value, format_spec)

    class plain_formatter(FieldChecks, SandboxedFormatter):
        pass

    class escape_formatter(FieldChecks, SandboxedEscapeFormatter):
        pass

    class LimitedEnvironment(ImmutableSandboxedEnvironment):
        # every operator goes through call_binop (where sizes are checked); an intercepted
        # operator is also never folded at compile time
        intercepted_binops = frozenset(["+", "-", "*", "/", "//", "%", "**"])
        intercepted_unops = frozenset(["+", "-"])
        code_generator_class = generator_class

        def __init__(self):
            super().__init__(
                loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True,
                extensions=[base_formatter.IgnoreGenerationTags, jinja2.ext.loopcontrols],
                optimized=False,  # no constant folding: `'x' * 10**10` stays an expression
                finalize=self._finalize,
            )
            self._local = threading.local()
            self.filters["tojson"] = base_formatter.tojson
            self.filters = {name: self._guard_filter(name, f) for name, f in self.filters.items()}
            self.tests = {name: self._guard_test(f) for name, f in self.tests.items()}
            self.globals["range"] = self._range
            self.globals.pop("lipsum", None)  # random text of any length: no template needs it

        # --- the budget
        def budget(self) -> _Budget:
            b = getattr(self._local, "budget", None)
            if b is None:  # compiling, or a render started elsewhere: the smallest limits
                b = self._local.budget = _Budget(OUTPUT_FLOOR, MAX_STEPS)
            return b

        def step(self) -> _Budget:
            b = self.budget()
            b.steps += 1
            if b.steps >= b.next_clock:
                b.clock()
            return b

        def size(self, value) -> int:
            """Bytes that value stands for, a part shared by several containers counted each
            time (that is what str() or tojson would write); stops counting past the limit."""
            if isinstance(value, str):
                return len(value)
            if isinstance(value, bool) or value is None or isinstance(value, float):
                return _ATOM
            if isinstance(value, int):
                return _ATOM + value.bit_length() // 3
            if not isinstance(value, containers):
                return len(value) if isinstance(value, (bytes, bytearray)) else _ATOM
            b = self.budget()
            hit = b.sizes.get(id(value))
            if hit is not None and hit[0] is value:
                return hit[1]
            limit, total, stack = b.max_value, 0, [value]
            changeable = False  # a namespace inside: its size can change, so it is not kept
            while stack and total <= limit:
                v = stack.pop()
                if isinstance(v, str):
                    total += len(v)
                elif isinstance(v, containers):
                    hit = b.sizes.get(id(v)) if v is not value else None
                    if hit is not None and hit[0] is v:
                        total += hit[1]
                        continue
                    if isinstance(v, Namespace):
                        changeable = True
                        v = object.__getattribute__(v, "_Namespace__attrs")
                    if isinstance(v, dict):
                        total += 2 * _ATOM * len(v)
                        if total <= limit:
                            stack.extend(v.keys())
                            stack.extend(v.values())
                    else:
                        total += _ATOM * len(v)
                        if total <= limit:
                            stack.extend(v)
                elif isinstance(v, int) and not isinstance(v, bool):
                    total += _ATOM + v.bit_length() // 3
                elif isinstance(v, (bytes, bytearray)):
                    total += len(v)
                else:
                    total += _ATOM
            if total <= limit and not changeable:
                b.sizes[id(value)] = (value, total)
            return total

        def made(self, result, inputs=()):
            """Check and count a value just made; inputs: what it was made from (a result that is
            one of them was not made, it was passed through)."""
            b = self.budget()
            if isinstance(result, (str, bytes, bytearray)):
                n = len(result)
                if n > 64 and any(result is x for x in inputs):
                    return result
                b.value(n, "a text")
                b.charge(n)
            elif isinstance(result, containers):
                b.value(self.size(result))
                b.charge(_ATOM * len(result) if not isinstance(result, Namespace) else _ATOM)
            elif isinstance(result, int) and not isinstance(result, bool):
                if result.bit_length() > MAX_INT_BITS:
                    raise _LimitExceeded(
                        f"tried to make a number of {result.bit_length():,} bits (the limit is {MAX_INT_BITS:,})")
                b.charge(_ATOM)
            else:
                b.charge(_ATOM)
            return result

        def check_estimate(self, n: int, what: str) -> None:
            self.budget().value(n, what)

        # --- hooks the compiled template calls
        def tandem_loop(self, iterable):
            step = self.step
            for item in iterable:
                step()
                yield item

        def tandem_charge(self, n: int) -> str:
            self.budget().charge(n)
            return ""

        def tandem_made(self, value):
            self.step()
            return self.made(value)

        def tandem_concat(self, join, parts):
            self.step()
            total = 0
            for p in parts:
                total += len(p) if isinstance(p, str) else self.size(p) * _REPR + 64
            self.check_estimate(total, "a text")
            return self.made(join(parts), parts)

        tandem_loop.tandem_internal = tandem_charge.tandem_internal = True  # type: ignore[attr-defined]

        @staticmethod
        @pass_context
        def _finalize(context, value):
            # also keeps jinja2 from finalizing constants at compile time: it needs a context
            env = context.environment
            b = env.step()
            b.charge(len(value) if isinstance(value, str) else env.size(value))
            return value

        def getattr(self, obj, attribute):
            self.step()
            return super().getattr(obj, attribute)

        def is_safe_attribute(self, obj, attr, value):
            # Codecs run in Python where no step is counted, some in quadratic time (punycode):
            # no chat template needs them.
            if attr in ("encode", "decode"):
                return False
            return super().is_safe_attribute(obj, attr, value)

        def getitem(self, obj, argument):
            self.step()
            return super().getitem(obj, argument)

        def call_binop(self, context, operator, left, right):
            self.step()
            self._check_binop(operator, left, right)
            return self.made(self.binop_table[operator](left, right), (left, right))

        def call_unop(self, context, operator, arg):
            self.step()
            return self.unop_table[operator](arg)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - as jinja2 names it
            b = __self.step()
            if isinstance(__obj, types.MethodType) and getattr(__obj.__func__, "tandem_internal", False):
                return __obj(*args)  # jinja2 adds _loop_vars / _block_vars for Context.call only
            if isinstance(__obj, LoopContext) and args:  # loop(...) of a recursive for: its items count too
                args = (__self.tandem_loop(args[0]), *args[1:])
            args = __self._check_call(__obj, args, kwargs)
            b.depth += 1
            try:
                if b.depth > MAX_CALL_DEPTH:
                    raise _LimitExceeded(f"nested calls more than {MAX_CALL_DEPTH} deep")
                result = super().call(__context, __obj, *args, **kwargs)
            finally:
                b.depth -= 1
            return __self.made(result, (*args, *kwargs.values()))

        def wrap_str_format(self, value):
            """jinja2's str.format in the sandbox, with the result foreseen from the format and
            each field's resolved spec checked (a width may come from another field: `{:{}}`)."""
            if not isinstance(value, (types.MethodType, types.BuiltinMethodType)) or \
                    value.__name__ not in ("format", "format_map") or not isinstance(value.__self__, str):
                return None
            text, is_map = value.__self__, value.__name__ == "format_map"
            formatter = (escape_formatter(self, escape=text.escape) if isinstance(text, Markup)
                         else plain_formatter(self))

            def wrapper(*args, **kwargs):
                if is_map:
                    if kwargs:
                        raise TypeError("format_map() takes no keyword arguments")
                    if len(args) != 1:
                        raise TypeError(f"format_map() takes exactly one argument ({len(args)} given)")
                    args, kwargs = (), args[0]
                values = list(args) + list(kwargs.values())
                self.check_estimate(self._format_estimate(text, values, mapping=True), "a formatted text")
                return type(text)(formatter.vformat(text, args, kwargs))

            return update_wrapper(wrapper, value)

        def _range(self, *args):
            try:
                n = len(range(*args))
            except OverflowError:
                n = MAX_RANGE + 1
            if n > MAX_RANGE:
                raise _LimitExceeded(f"asked for a range of {n:,} numbers (the limit is {MAX_RANGE:,})")
            return safe_range(*args)

        # --- estimates, before a value is made
        def _check_binop(self, op, left, right) -> None:
            if op == "*":
                seq, n = (left, right) if isinstance(right, int) else (right, left)
                if isinstance(seq, sequences) and isinstance(n, int) and n > 0:
                    self.check_estimate(self.size(seq) * n, "a repeated text or list")
                elif isinstance(left, int) and isinstance(right, int):
                    if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                        raise _LimitExceeded(f"tried to make a number of over {MAX_INT_BITS:,} bits")
            elif op == "**":
                if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
                    if right > MAX_INT_BITS or right * left.bit_length() > MAX_INT_BITS + right:
                        raise _LimitExceeded(f"tried to make a number of over {MAX_INT_BITS:,} bits")
            elif op == "+":
                if isinstance(left, sequences) and isinstance(right, sequences):
                    self.check_estimate(self.size(left) + self.size(right), "a joined text or list")
            elif op == "%" and isinstance(left, str):
                mapping = isinstance(right, dict)
                values = list(right.values()) if mapping else list(right) if isinstance(right, tuple) else [right]
                self.check_estimate(self._format_estimate(left, values, mapping), "a formatted text")

        def _format_estimate(self, fmt: str, values: list, mapping: bool) -> int:
            """An upper bound of a %-format or str.format result: widths and precisions are the
            numbers in the format; an argument is written once, or once per field when fields
            can name it again."""
            total = len(fmt) + spec_width(fmt)
            sizes = [self.size(v) for v in values]
            total += sum(min(abs(v), 1 << 62) for v in values if isinstance(v, int) and not isinstance(v, bool))
            factor = 10 if format_repr.search(fmt) else 1
            if mapping and format_reuse.search(fmt):
                fields = fmt.count("{") + fmt.count("%")
                return total + fields * factor * max(sizes, default=0)
            return total + factor * sum(sizes)

        def _check_call(self, obj, args: tuple, kwargs: dict) -> tuple:
            """Foresee what a str method can make; returns the arguments to call with (an
            iterator to join is read into a list first, so that its size is known)."""
            # str's and bytes' own methods, and Markup's (Python methods wrapping str's)
            if not isinstance(obj, (types.BuiltinMethodType, types.MethodType)):
                return args
            s = getattr(obj, "__self__", None)
            name = getattr(obj, "__name__", None)
            if not isinstance(s, (str, bytes, bytearray)) or name not in str_methods:
                return args
            arg = (lambda i, key, default=None: args[i] if len(args) > i else kwargs.get(key, default))
            if name in ("center", "ljust", "rjust", "zfill"):
                width = arg(0, "width", 0)
                if isinstance(width, int):
                    self.check_estimate(max(len(s), width), "a padded text")
            elif name == "expandtabs":
                tab = arg(0, "tabsize", 8)
                if isinstance(tab, int):
                    tabs = s.count("\t" if isinstance(s, str) else b"\t")
                    self.check_estimate(len(s) + tabs * max(tab, 0), "a text with tabs expanded")
            elif name == "replace":
                self.check_estimate(self._replace_estimate(s, arg(0, "old"), arg(1, "new"), arg(2, "count", -1)),
                                    "a replaced text")
            elif name == "join" and args:
                items = args[0] if isinstance(args[0], (list, tuple, str, bytes)) else list(self.tandem_loop(args[0]))
                self.check_estimate(self.size(items) + len(s) * len(items), "a joined text")
                args = (items, *args[1:])
            elif name == "translate":
                table = arg(0, "table")
                longest = max((self.size(v) for v in table.values()), default=1) if isinstance(table, dict) else 1
                self.check_estimate(len(s) * max(longest, 1), "a translated text")
            return args

        @staticmethod
        def _replace_estimate(s, old, new, count) -> int:
            texts = (str, bytes, bytearray)
            if not isinstance(s, texts) or not isinstance(old, texts) or not isinstance(new, texts):
                return len(s) if isinstance(s, texts) else 0
            try:
                n = s.count(old) if old else len(s) + 1
            except TypeError:  # str and bytes mixed: replace() itself refuses it
                return len(s)
            if isinstance(count, int) and count >= 0:
                n = min(n, count)
            return len(s) + n * max(0, len(new) - len(old))

        # --- filters and tests
        def _guard_filter(self, name: str, func):
            pass_arg = _PassArg.from_obj(func)
            check = getattr(self, f"_filter_{name}", None)
            if name == "sum":
                func, pass_arg = self._sum, _PassArg.environment

            @pass_context
            def guarded(context, value, *args, **kwargs):
                self.step()
                for x in (value, *args, *kwargs.values()):
                    if isinstance(x, containers):  # str() of it may be what the filter writes
                        self.check_estimate(self.size(x), "a value")
                if check is not None:
                    value = check(value, args, kwargs)
                if pass_arg is _PassArg.context:
                    result = func(context, value, *args, **kwargs)
                elif pass_arg is _PassArg.eval_context:
                    result = func(context.eval_ctx, value, *args, **kwargs)
                elif pass_arg is _PassArg.environment:
                    result = func(context.environment, value, *args, **kwargs)
                else:
                    result = func(value, *args, **kwargs)
                return self.made(result, (value, *args, *kwargs.values()))

            guarded.__name__ = getattr(func, "__name__", name)
            return guarded

        def _guard_test(self, func):
            pass_arg = _PassArg.from_obj(func)

            @pass_context
            def guarded(context, value, *args, **kwargs):
                self.step()
                if pass_arg is _PassArg.context:
                    return func(context, value, *args, **kwargs)
                if pass_arg is _PassArg.eval_context:
                    return func(context.eval_ctx, value, *args, **kwargs)
                if pass_arg is _PassArg.environment:
                    return func(context.environment, value, *args, **kwargs)
                return func(value, *args, **kwargs)

            return guarded

        def _sum(self, environment, iterable, attribute=None, start=0):
            """jinja2's sum, without its quadratic time on lists (sum() copies the total so far
            for every item) going unchecked."""
            from jinja2.filters import make_attrgetter

            if attribute is not None:
                iterable = map(make_attrgetter(environment, attribute), iterable)
            items = list(self.tandem_loop(iterable))
            if isinstance(start, (list, tuple)):
                self.check_estimate(self.size(start) + self.size(items), "a sum")
                slots = len(start) + sum(len(i) for i in items if isinstance(i, (list, tuple)))
                self.budget().charge(_ATOM * slots * len(items) // 2)  # what sum() copies on the way
            return sum(items, start)

        def _text_arg(self, value) -> int:
            return len(value) if isinstance(value, str) else self.size(value) * _REPR + 64

        def _filter_center(self, value, args, kwargs):
            width = args[0] if args else kwargs.get("width", 80)
            if isinstance(width, int):
                self.check_estimate(max(self._text_arg(value), width), "a padded text")
            return value

        def _filter_indent(self, value, args, kwargs):
            width = args[0] if args else kwargs.get("width", 4)
            w = width if isinstance(width, int) else len(str(width)) if isinstance(width, str) else 0
            s = self._text_arg(value)
            lines = (value.count("\n") if isinstance(value, str) else s) + 1
            self.check_estimate(s + lines * max(w, 0), "an indented text")
            return value

        def _filter_wordwrap(self, value, args, kwargs):
            wrap = args[2] if len(args) > 2 else kwargs.get("wrapstring")
            self.check_estimate(self._text_arg(value) * (1 + (len(wrap) if isinstance(wrap, str) else 1)),
                                "a wrapped text")
            return value

        def _filter_replace(self, value, args, kwargs):
            old = args[0] if args else kwargs.get("old", "")
            new = args[1] if len(args) > 1 else kwargs.get("new", "")
            count = args[2] if len(args) > 2 else kwargs.get("count")
            s = value if isinstance(value, str) else str(value)  # its size was checked: bounded
            old = old if isinstance(old, str) else str(old)
            n = s.count(old) if old else len(s) + 1
            if isinstance(count, int) and count >= 0:
                n = min(n, count)
            self.check_estimate(len(s) + n * max(0, self._text_arg(new) - len(old)), "a replaced text")
            return value

        def _filter_join(self, value, args, kwargs):
            items = value if isinstance(value, (list, tuple, str)) else list(self.tandem_loop(value))
            sep = args[0] if args else kwargs.get("d", "")
            self.check_estimate(self.size(items) + self._text_arg(sep) * len(items), "a joined text")
            return items

        def _filter_format(self, value, args, kwargs):
            if isinstance(value, str):
                values = list(kwargs.values()) if kwargs else list(args)
                self.check_estimate(self._format_estimate(value, values, bool(kwargs)), "a formatted text")
            return value

        def _filter_tojson(self, value, args, kwargs):
            indent = args[1] if len(args) > 1 else kwargs.get("indent")
            step = indent if isinstance(indent, int) else len(indent) if isinstance(indent, str) else 0
            seps = args[2] if len(args) > 2 else kwargs.get("separators")
            sep = sum(len(s) for s in seps if isinstance(s, str)) if isinstance(seps, (list, tuple)) else 2
            size, count, depth = self._shape(value)
            self.check_estimate(_REPR * size + count * (depth * max(step, 0) + sep + 2), "a JSON text")
            return value

        def _filter_pprint(self, value, args, kwargs):
            size, count, depth = self._shape(value)
            self.check_estimate(_REPR * size + count * (depth + 2), "a printed value")
            return value

        def _filter_batch(self, value, args, kwargs):
            n = args[0] if args else kwargs.get("linecount", 0)
            fill = args[1] if len(args) > 1 else kwargs.get("fill_with")
            if isinstance(n, int):
                self.check_estimate(self._text_arg(value) + n * (_ATOM + self.size(fill)), "a batched list")
            return value

        def _filter_slice(self, value, args, kwargs):
            n = args[0] if args else kwargs.get("slices", 0)
            fill = args[1] if len(args) > 1 else kwargs.get("fill_with")
            if isinstance(n, int):
                self.check_estimate(self._text_arg(value) + n * (2 * _ATOM + self.size(fill)), "a sliced list")
            return value

        def _filter_urlize(self, value, args, kwargs):
            extra = sum(len(x) for x in (*args, *kwargs.values()) if isinstance(x, str)) + 64
            s = self._text_arg(value)
            marks = value.count(".") + value.count("@") + value.count(":") + 1 if isinstance(value, str) else s
            self.check_estimate(3 * s + marks * extra, "a text with links")
            return value

        def _filter_truncate(self, value, args, kwargs):
            end = args[2] if len(args) > 2 else kwargs.get("end", "...")
            self.check_estimate(self._text_arg(value) + (len(end) if isinstance(end, str) else 0), "a text")
            return value

        def _shape(self, value) -> tuple[int, int, int]:
            """(size, number of items, depth) of a value, bounded like size()."""
            limit = self.budget().max_value
            size = self.size(value)
            if size > limit:
                return size, size, 1
            count, depth, stack = 0, 0, [(value, 1)]
            while stack and count <= limit:
                v, d = stack.pop()
                if isinstance(v, Namespace):
                    v = object.__getattribute__(v, "_Namespace__attrs")
                if isinstance(v, dict):
                    count += len(v)
                    depth = max(depth, d)
                    stack.extend((x, d + 1) for x in v.values())
                elif isinstance(v, (list, tuple, set, frozenset)):
                    count += len(v)
                    depth = max(depth, d)
                    stack.extend((x, d + 1) for x in v)
            return size, count, depth

    return LimitedEnvironment


class LimitedTemplate:
    """A chat template compiled in the limited sandbox. Compiling raises UnsafeChatTemplate for a
    template too large to compile quickly and ChatTemplateError for one that does not compile;
    render() raises UnsafeChatTemplate when the template breaks a limit, and lets the template's
    own errors (raise_exception, a sandbox SecurityError) through as they are."""

    def __init__(self, source: str):
        if not isinstance(source, str):
            raise ChatTemplateError("The chat template is not text.")
        if len(source) > MAX_TEMPLATE_CHARS:
            raise UnsafeChatTemplate(
                f"is {_size_text(len(source))} long (the limit is {_size_text(MAX_TEMPLATE_CHARS)})")
        from jinja2 import TemplateError, nodes

        self.environment = env = _environment_class()()
        try:
            ast = env.parse(source)
            n_nodes = sum(1 for _ in ast.find_all(nodes.Node))
            if n_nodes > MAX_TEMPLATE_NODES:
                raise UnsafeChatTemplate(
                    f"has {n_nodes:,} parts (the limit is {MAX_TEMPLATE_NODES:,}), too many to compile quickly")
            _instrument(ast)
            self.template = env.from_string(ast)
        except RecursionError:
            raise UnsafeChatTemplate("nests too deeply to compile") from None
        except MemoryError:
            raise UnsafeChatTemplate("ran out of memory while compiling") from None
        except (TemplateError, SyntaxError) as err:  # SyntaxError: Python refused the compiled code
            raise ChatTemplateError(str(err)) from err
        finally:
            env._local.budget = None

    def render(self, **variables) -> str:
        env = self.environment
        messages = variables.get("messages") or ()
        measuring = _Budget(1 << 62, MAX_STEPS)  # the conversation itself is measured in full
        env._local.budget = measuring
        try:
            size = env.size(messages) + sum(len(v) for v in variables.values() if isinstance(v, str))
            budget = _Budget(OUTPUT_FLOOR + OUTPUT_PER_INPUT * size, MAX_STEPS + STEPS_PER_MESSAGE * len(messages))
            budget.sizes = measuring.sizes
            env._local.budget = budget
            out, written = [], 0
            chunks = self.template.generate(**variables)
            try:
                for chunk in chunks:
                    written += len(chunk)
                    if written > budget.max_value:
                        raise _LimitExceeded(
                            f"wrote a prompt of more than {_size_text(budget.max_value)} (the limit for this "
                            "conversation)")
                    out.append(chunk)
            finally:
                chunks.close()
            return "".join(out)
        except _LimitExceeded as err:
            raise UnsafeChatTemplate(err.what) from None
        except RecursionError:
            raise UnsafeChatTemplate("nested calls or values too deeply") from None
        except MemoryError:
            raise UnsafeChatTemplate("ran out of memory") from None
        finally:
            env._local.budget = None


def limit_llama_templates() -> None:
    """Make llama-cpp-python's Jinja2ChatFormatter render through LimitedTemplate.

    Creating a llama_cpp.Llama compiles every chat template in the file with that class, in a
    sandbox that folds constants at compile time: `{{ 'x' * 10**10 }}` allocates 10 GB before
    Tandem's own formatter ever sees the template. The replacement compiles on first use, with
    the limits, and renders the same text. Idempotent; run it before creating any Llama."""
    import llama_cpp.llama_chat_format as lcf

    original = lcf.Jinja2ChatFormatter
    if getattr(original, "tandem_original", None) is not None:
        return

    class LimitedJinja2ChatFormatter(original):
        tandem_original = original

        def __init__(self, template: str, eos_token: str, bos_token: str, add_generation_prompt: bool = True,
                     stop_token_ids=None):
            self.template = template
            self.eos_token, self.bos_token = eos_token, bos_token
            self.add_generation_prompt = add_generation_prompt
            self.stop_token_ids = set(stop_token_ids) if stop_token_ids is not None else None
            self._limited: LimitedTemplate | None = None
            self._lock = threading.Lock()

        def __call__(self, *, messages, functions=None, function_call=None, tools=None, tool_choice=None, **kwargs):
            with self._lock:
                if self._limited is None:
                    self._limited = LimitedTemplate(self.template)
            prompt = self._limited.render(**template_variables(
                messages, self.eos_token, self.bos_token, self.add_generation_prompt, **kwargs)
                | dict(functions=functions, function_call=function_call, tools=tools, tool_choice=tool_choice))
            stopping_criteria = None
            if self.stop_token_ids is not None:
                import llama_cpp

                stop_ids = self.stop_token_ids

                def stop_on_last_token(tokens, logits) -> bool:
                    return tokens[-1] in stop_ids

                stopping_criteria = llama_cpp.StoppingCriteriaList([stop_on_last_token])
            return lcf.ChatFormatterResponse(prompt=prompt, stop=[self.eos_token],
                                             stopping_criteria=stopping_criteria, added_special=True)

    lcf.Jinja2ChatFormatter = LimitedJinja2ChatFormatter
