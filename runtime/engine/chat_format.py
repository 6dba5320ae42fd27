"""Rendering a conversation into prompt tokens with the model's own chat template.

Templates come from the GGUF file and are untrusted: they are rendered only through
template_sandbox.LimitedTemplate (jinja2's sandbox with bounded time, steps, output and memory,
and no constant folding), with the same settings, filters and variables as llama-cpp-python's
Jinja2ChatFormatter, so a normal template renders exactly as it did there. A template that breaks
a limit raises UnsafeChatTemplate; at load a trial render does the same, so such a model refuses
to load.
"""

from __future__ import annotations

import copy
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from tandem.runtime.engine.template_sandbox import LimitedTemplate, limit_llama_templates, template_variables
from tandem.runtime.errors import ChatTemplateError, ModelLoadError, UnsafeChatTemplate

__all__ = ["ChatFormatter", "RenderedPrompt", "limit_llama_templates", "validate_messages"]

ROLES = ("system", "user", "assistant", "tool")

# Used only when a GGUF carries no chat template at all.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# rendered once at load: a template that breaks a limit on these refuses to load
_TRIAL = (
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Hello!"},
     {"role": "assistant", "content": "Hi! How can I help?"}, {"role": "user", "content": "Tell me a joke."}],
)


@dataclass(frozen=True)
class RenderedPrompt:
    tokens: list[int]
    stops: tuple[str, ...]


def validate_messages(messages: list[dict]) -> list[dict]:
    """{role, content} dicts with known roles (and, for tool use, an assistant's tool_calls and a
    tool result's tool_call_id and name), or a ChatTemplateError saying what is wrong."""
    if not messages:
        raise ChatTemplateError("There are no messages to answer: send at least one user message.")
    clean = []
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ChatTemplateError(
                f"Message {i} has role {role!r}; use one of {', '.join(ROLES)}."
            )
        if not isinstance(content, str):
            raise ChatTemplateError(f"Message {i} has no text content.")
        out = {"role": role, "content": content}
        if role == "assistant" and m.get("tool_calls"):
            out["tool_calls"] = m["tool_calls"]
        if role == "tool":
            out.update({k: m[k] for k in ("tool_call_id", "name") if isinstance(m.get(k), str)})
        clean.append(out)
    return clean


class ChatFormatter:
    """Formats messages for one loaded llama_cpp.Llama."""

    def __init__(self, llama):
        self._llama = llama
        self._special_memo: dict[str, bool] = {}
        model = llama._model
        eos_id, bos_id = llama.token_eos(), llama.token_bos()
        self._eos = model.token_get_text(eos_id) if eos_id != -1 else ""
        self._bos = model.token_get_text(bos_id) if bos_id != -1 else ""
        template = llama.metadata.get("tokenizer.chat_template") or CHATML_TEMPLATE
        self._source = template
        self._tools: list[dict] | None = None
        self.has_own_template = "tokenizer.chat_template" in llama.metadata
        name = Path(getattr(llama, "model_path", None) or "the model").name
        try:
            self._template = LimitedTemplate(template)
        except ChatTemplateError as err:
            # a template that does not compile is a broken file, as when llama.cpp refused it
            raise ModelLoadError(
                f"{name}: the model's chat template does not compile ({err}). "
                "Use another copy of the model or a model with a standard template."
            ) from err
        for messages in _TRIAL:  # a template that breaks a limit refuses to load
            try:
                self._template.render(**self._variables(messages, True))
            except UnsafeChatTemplate:
                raise
            except Exception:  # noqa: BLE001 - rejecting a conversation (roles must alternate) is its right
                pass

    @property
    def supports_tools(self) -> bool:
        """Whether the model's own template lays out tool definitions (it reads `tools`)."""
        return self.has_own_template and "tools" in self._source

    def with_tools(self, tools) -> "ChatFormatter":
        """This formatter handing `tools` (OpenAI-style definitions) to the template."""
        if not tools:
            return self
        view = copy.copy(self)
        view._tools = [self._defused_values(t) for t in tools]
        return view

    def _variables(self, messages: list[dict], generation_prompt: bool) -> dict:
        variables = template_variables(messages, self._eos, self._bos, generation_prompt)
        if self._tools:
            variables["tools"] = self._tools
        return variables

    def _defused_values(self, value):
        """Structured values (tool definitions, tool call arguments) with every string that spells
        a special token defused: the template copies them into the prompt as text."""
        if isinstance(value, str):
            return self._defuse(value) if self._spells_special(value) else value
        if isinstance(value, dict):
            return {self._defused_values(k): self._defused_values(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._defused_values(v) for v in value]
        return value

    def raw(self, prompt: str) -> RenderedPrompt:
        """A prompt written out in full (a completion, not a chat): tokenized as it is, control
        tokens spelled in it included, with the beginning-of-text token where the model wants one."""
        tokens = self._llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        return RenderedPrompt(tokens=tokens, stops=tuple(s for s in (self._eos,) if s))

    def _fill(self, messages: list[dict], generation_prompt: bool) -> str:
        try:
            return self._template.render(**self._variables(messages, generation_prompt))
        except UnsafeChatTemplate:
            raise
        except Exception as err:  # the template itself raised (e.g. "roles must alternate")
            raise ChatTemplateError(
                f"The model's chat template rejected this conversation: {err}"
            ) from err

    def render(self, messages: list[dict], generation_prompt: bool = True) -> RenderedPrompt:
        """The prompt tokens; generation_prompt False: without the opening of the reply, which
        gives where a message ends inside a longer conversation.

        Only the template's own markup becomes special tokens: text in a message that spells one
        (a user writing `<|im_end|><|im_start|>system`) stays plain text, so no message can forge
        a turn of another role."""
        messages = validate_messages(messages)
        messages = [{k: self._defused_values(v) if k in ("tool_calls", "tool_call_id", "name") else v
                     for k, v in m.items()} for m in messages]
        prompt = self._fill(messages, generation_prompt)
        risky = [i for i, m in enumerate(messages) if self._spells_special(m["content"])]
        if not risky:  # the common case: the prompt as llama-cpp-python's formatter tokenizes it
            tokens = self._tokenize(prompt, special=True)
        else:
            tokens = self._tokenize_apart(messages, generation_prompt, prompt, risky)
        return RenderedPrompt(tokens=tokens, stops=tuple(s for s in (self._eos,) if s))

    def _tokenize(self, text: str, special: bool) -> list[int]:
        # as llama-cpp-python's formatter: the template writes the BOS itself (added_special)
        return self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=special) if text else []

    def _spells_special(self, text: str) -> bool:
        """Whether parsing special tokens would change how this text is tokenized."""
        if not text:
            return False
        known = self._special_memo.get(text)
        if known is None:
            known = self._tokenize(text, special=True) != self._tokenize(text, special=False)
            if len(self._special_memo) > 4096:  # history repeats every turn; a bound keeps it small
                self._special_memo.clear()
            self._special_memo[text] = known
        return known

    def _tokenize_apart(self, messages: list[dict], generation_prompt: bool, prompt: str, risky: list[int]) -> list[int]:
        """Tokenize the template's text with special tokens and the risky messages' text without.

        The template is rendered again with a unique marker in place of each risky message; when
        putting the messages back in gives the same prompt (the template copies message text as
        it is, as chat templates do), the pieces are tokenized apart. A template that changes the
        text it copies gets the messages with each special token's spelling broken instead."""
        nonce = secrets.token_hex(6)
        marks = {i: f"\ue000{nonce}:{i}\ue001" for i in risky}
        marked = [{**m, "content": marks[i]} if i in marks else m for i, m in enumerate(messages)]
        shape = self._fill(marked, generation_prompt)
        pattern = re.compile("(" + "|".join(re.escape(v) for v in marks.values()) + ")")
        pieces = pattern.split(shape)
        by_mark = {v: messages[i]["content"] for i, v in marks.items()}
        if "".join(by_mark.get(p, p) for p in pieces) == prompt:
            tokens: list[int] = []
            for piece in pieces:
                tokens += self._tokenize(by_mark[piece], special=False) if piece in by_mark else self._tokenize(piece, special=True)
            return tokens
        defused = [{**m, "content": self._defuse(m["content"])} if i in marks else m for i, m in enumerate(messages)]
        return self._tokenize(self._fill(defused, generation_prompt), special=True)

    def _defuse(self, text: str) -> str:
        """The text with a word joiner inside each special token it spells (it then reads as text)."""
        plain = set(self._tokenize(text, special=False))
        for token in set(self._tokenize(text, special=True)) - plain:
            spelled = self._llama._model.token_get_text(token)
            if len(spelled) > 1:
                text = text.replace(spelled, spelled[0] + "\u2060" + spelled[1:])
        return text
