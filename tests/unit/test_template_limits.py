"""Chat templates render in a sandbox that bounds their time, steps, output and values: a hostile
template fails fast with UnsafeChatTemplate naming the limit, and normal templates render exactly
as llama-cpp-python's own Jinja2ChatFormatter renders them."""

import threading
import tracemalloc
from functools import lru_cache

import pytest
from gguf import GGUFReader
from llama_cpp import llama_chat_format

from tandem.runtime.engine.chat_format import CHATML_TEMPLATE
from tandem.runtime.engine.template_sandbox import (MAX_TEMPLATE_CHARS, LimitedTemplate, limit_llama_templates,
                                                    template_variables)
from tandem.runtime.errors import InvalidModelFile, UnsafeChatTemplate

WAIT_S = 30  # a render that hangs fails the test after this long instead of blocking the run

GEMMA3 = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

# What newer templates use: namespaces, macros, JSON, reversed scans, splitting, formatting.
FEATURES = """{%- set ns = namespace(last_user=-1, system='') -%}
{%- macro render(role, text) -%}<|{{ role }}|>{{ text | trim }}{{ eos_token if role == 'assistant' }}
{% endmacro -%}
{%- for m in messages[::-1] -%}
  {%- if m.role == 'user' and ns.last_user < 0 %}{% set ns.last_user = (messages|length) - loop.index %}{% endif -%}
{%- endfor -%}
{%- for m in messages if m.role == 'system' %}{% set ns.system = ns.system ~ m.content %}{% endfor -%}
{{ bos_token }}{{ '# %s (%d turns)\n' % (ns.system or 'none', messages|length) }}
{%- for m in messages if m.role != 'system' -%}
  {%- set text = m.content.split('</think>')[-1] if m.role == 'assistant' else m.content -%}
  {{ render(m.role, text) }}
  {%- if loop.index0 == ns.last_user %}{{ {'turn': loop.index, 'roles': messages|map(attribute='role')|unique|list}|tojson }}{% endif -%}
{%- endfor -%}
{{ '{}|{}'.format(messages|selectattr('role', 'eq', 'user')|list|length, (messages|last).role) }}
{{- range(3)|join(',') ~ ('-' * 3) ~ [1, 2]|sum ~ ('%05.1f' % 3.14159) ~ 'ab'.center(6, '.') -}}
{%- if add_generation_prompt %}<|assistant|>{% endif %}"""

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "  Hi there  "},
     {"role": "assistant", "content": "<think>hm</think>Hello."}, {"role": "user", "content": "Tell me a joke."}],
    [{"role": "user", "content": f"Question {i}: {'é' * i}"} if i % 2 == 0 else
     {"role": "assistant", "content": f"Answer {i}\n" * 3} for i in range(41)],
]


def original_formatter():
    """llama-cpp-python's own class, also after limit_llama_templates() replaced it."""
    cls = llama_chat_format.Jinja2ChatFormatter
    return getattr(cls, "tandem_original", cls)


@lru_cache(maxsize=1)
def smollm2_template(model_path) -> str:
    return GGUFReader(model_path).fields["tokenizer.chat_template"].contents()


def render(source: str, messages, generation_prompt=True, timeout=WAIT_S) -> str:
    """Compile and render in a thread, so that a hang fails the test instead of blocking it."""
    box = {}

    def run():
        try:
            variables = template_variables(messages, "</s>", "<s>", generation_prompt)
            box["out"] = LimitedTemplate(source).render(**variables)
        except BaseException as err:  # noqa: BLE001 - handed to the test thread
            box["err"] = err

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"the render was still running after {timeout} s"
    if "err" in box:
        raise box["err"]
    return box["out"]


@pytest.mark.parametrize("name", ["smollm2", "gemma3", "chatml", "features"])
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_normal_templates_render_exactly_as_before(name, generation_prompt, model_path):
    source = {"smollm2": lambda: smollm2_template(model_path), "gemma3": lambda: GEMMA3,
              "chatml": lambda: CHATML_TEMPLATE, "features": lambda: FEATURES}[name]()
    theirs = original_formatter()(template=source, eos_token="</s>", bos_token="<s>",
                                  add_generation_prompt=generation_prompt)
    for messages in CONVERSATIONS:
        if name == "gemma3" and messages[0]["role"] == "system" and len(messages) % 2:
            continue  # not alternating after the system message: Gemma's template refuses it
        expected = theirs(messages=messages).prompt
        assert render(source, messages, generation_prompt) == expected


def test_the_templates_own_errors_are_not_limits():
    with pytest.raises(ValueError, match="roles must alternate"):
        render(GEMMA3, [{"role": "assistant", "content": "first"}])
    with pytest.raises(Exception, match="unsafe") as info:
        render("{{ ''.__class__.__mro__[1].__subclasses__() }}", CONVERSATIONS[0])
    assert not isinstance(info.value, UnsafeChatTemplate)


# Loops whose steps run out in well under a second on an idle machine; on a loaded one the CPU-time
# limit may come first: either limit stopping them is right, and neither depends on the machine.
STEPS_OR_CPU = "steps|CPU time"

HOSTILE = {
    # name: (template, what the error names)
    "nested range loops": ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                           STEPS_OR_CPU),
    "nested loops writing": ("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
                             STEPS_OR_CPU),
    "repetition folded at compile time": ("{{ 'x' * 10**10 }}", "repeated text"),
    "a billion-number range": ("{{ range(10**9)|list }}", "range of 1,000,000,000 numbers"),
    "huge output from a loop": ("{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}", "prompt of more than"),
    "output collected in a set block": (
        "{% set s %}{% for i in range(1000) %}{% for j in range(1000) %}"
        + "z" * 2000 + "{% endfor %}{% endfor %}{% endset %}{{ s|length }}", "in all"),
    "doubling a string": ("{% set ns = namespace(x='x') %}{% for i in range(64) %}{% set ns.x = ns.x ~ ns.x %}"
                          "{% endfor %}{{ ns.x|length }}", "a text of"),
    "padding filter": ("{{ 'x'|center(9999999999) }}", "padded text"),
    "padding method": ("{{ 'x'.ljust(9999999999) }}", "padded text"),
    "padding a markup string": ("{{ ('x'|safe).center(9999999999) }}", "padded text"),
    "format width": ("{{ '%9999999999s' % 'x' }}", "formatted text"),
    "str.format width": ("{{ '{:>9999999999}'.format(1) }}", "formatted text"),
    "str.format width from a field": ("{{ '{0:{1[w]}}'.format('x', {'w': '9999999999'}) }}", "formatted text"),
    "endless recursion": ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "deep"),
    "a literal repeating a large value": (
        "{% set a = 'x' * 1000000 %}{% set l = [a, a, a, a, a, a, a, a, a, a] %}{{ l|join }}", "value of"),
    "a huge number": ("{{ 7 ** 100000 }}", "bits"),
    "replace amplification": ("{{ ('x' * 100000)|replace('x', 'y' * 100000) }}", "replaced text"),
    "join with a huge separator": ("{{ ('y' * 1000000).join(range(1000)|map('string')) }}", "joined text"),
    "json indentation": ("{{ range(50000)|list|tojson(indent=100000) }}", "JSON text"),
    "a recursive loop fed a huge list": (
        "{% set L = [0] * 200000 %}{% for x in range(1, 100000) recursive %}{% if x %}{{ loop(L) }}{% endif %}"
        "{% endfor %}", STEPS_OR_CPU),
    "slow comparisons": ("{% set a = 'x' * 3000000 %}{% set b = 'x' * 2999999 ~ 'y' %}"
                         "{% for i in range(100000) %}{% if a == b %}{% endif %}{% endfor %}", "CPU time"),
}


@pytest.mark.parametrize("source", [
    "{{ 'x'.encode() * 10**10 }}",
    # a text short enough to build well within the CPU limit on a loaded machine: the codec is refused, not timed out
    "{% set s %}{% for i in range(256, 3000) %}{{ '%c' % i }}{% endfor %}{% endset %}{{ s.encode('punycode') }}",
    "{{ 'eA'.encode().decode('rot13') }}",
])
def test_codecs_are_out_of_a_templates_reach(source):
    # they run in Python where no step is counted, some in quadratic time (punycode)
    from jinja2.exceptions import SecurityError

    with pytest.raises(SecurityError, match="encode|decode"):
        render(source, CONVERSATIONS[1])


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_template_fails_fast_naming_the_limit(name):
    source, what = HOSTILE[name]
    with pytest.raises(UnsafeChatTemplate, match=what) as info:
        render(source, CONVERSATIONS[1])
    err = info.value
    assert isinstance(err, InvalidModelFile) and err.code == "unsafe_chat_template"
    assert str(err).startswith("This model's chat template ")
    assert "Use another copy of the model or a model with a standard template." in str(err)


def test_compiling_folds_nothing():
    tracemalloc.start()
    try:
        template = LimitedTemplate("{{ 'x' * 10**10 }}{{ 'x'|center(10**10) }}{{ [0] * 10**9 }}")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 << 20
    with pytest.raises(UnsafeChatTemplate):
        template.render(**template_variables(CONVERSATIONS[0], "", "", True))


def test_oversized_templates_are_refused_before_compiling():
    with pytest.raises(UnsafeChatTemplate, match="long"):
        LimitedTemplate("x" * (MAX_TEMPLATE_CHARS + 1))
    with pytest.raises(UnsafeChatTemplate, match="parts"):
        LimitedTemplate("{{a+b}}" * 18_000)
    with pytest.raises(UnsafeChatTemplate, match="deep"):
        LimitedTemplate("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}")


def test_the_output_limit_grows_with_the_conversation():
    big = [{"role": "user", "content": "w" * (6 << 20)}]  # beyond the fixed allowance on its own
    out = render(CHATML_TEMPLATE, big)
    assert out.startswith("<|im_start|>user\nwww") and len(out) > 6 << 20
    with pytest.raises(UnsafeChatTemplate, match="prompt of more than"):
        render("{% for i in range(40) %}{{ messages[0].content }}{% endfor %}", big)


def test_a_long_conversation_is_not_a_limit():
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " * 50} for i in range(3001)]
    out = render(GEMMA3, messages)
    assert out.count("<start_of_turn>") == 3002


def test_llama_cpp_python_compiles_through_the_limits():
    limit_llama_templates()
    limit_llama_templates()  # idempotent
    cls = llama_chat_format.Jinja2ChatFormatter
    assert cls.tandem_original is original_formatter()
    hostile = cls(template="{{ 'x' * 10**10 }}", eos_token="</s>", bos_token="<s>")  # what Llama() does
    with pytest.raises(UnsafeChatTemplate, match="repeated text"):
        hostile(messages=CONVERSATIONS[0])
    ours = cls(template=GEMMA3, eos_token="<eos>", bos_token="<bos>", stop_token_ids=[1])
    theirs = original_formatter()(template=GEMMA3, eos_token="<eos>", bos_token="<bos>", stop_token_ids=[1])
    a, b = ours(messages=CONVERSATIONS[1]), theirs(messages=CONVERSATIONS[1])
    assert (a.prompt, a.stop, a.added_special) == (b.prompt, b.stop, b.added_special)
    assert a.stopping_criteria is not None
