"""Rendering a conversation into prompt tokens with the model's own chat template.

Templates come from the GGUF file and are untrusted: they are rendered only through
llama-cpp-python's Jinja2ChatFormatter, which uses jinja2's ImmutableSandboxedEnvironment
(the fix for CVE-2024-34359). Never render a model's template anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

from tandem.runtime.errors import ChatTemplateError

ROLES = ("system", "user", "assistant")

# Used only when a GGUF carries no chat template at all.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class RenderedPrompt:
    tokens: list[int]
    stops: tuple[str, ...]


def validate_messages(messages: list[dict]) -> list[dict]:
    """Plain {role, content} dicts with known roles, or a ChatTemplateError saying what is wrong."""
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
        clean.append({"role": role, "content": content})
    return clean


class ChatFormatter:
    """Formats messages for one loaded llama_cpp.Llama."""

    def __init__(self, llama):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self._llama = llama
        model = llama._model
        eos_id, bos_id = llama.token_eos(), llama.token_bos()
        eos = model.token_get_text(eos_id) if eos_id != -1 else ""
        bos = model.token_get_text(bos_id) if bos_id != -1 else ""
        template = llama.metadata.get("tokenizer.chat_template") or CHATML_TEMPLATE
        self.has_own_template = "tokenizer.chat_template" in llama.metadata
        self._formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
        self._bare = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos, add_generation_prompt=False)

    def render(self, messages: list[dict], generation_prompt: bool = True) -> RenderedPrompt:
        """The prompt tokens; generation_prompt False: without the opening of the reply, which
        gives where a message ends inside a longer conversation."""
        messages = validate_messages(messages)
        try:
            result = (self._formatter if generation_prompt else self._bare)(messages=messages)
        except Exception as err:  # the template itself raised (e.g. "roles must alternate")
            raise ChatTemplateError(
                f"The model's chat template rejected this conversation: {err}"
            ) from err
        tokens = self._llama.tokenize(
            result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True
        )
        stops = result.stop if isinstance(result.stop, list) else [result.stop]
        return RenderedPrompt(tokens=tokens, stops=tuple(s for s in stops if s))
