"""Errors raised by the runtime, with messages written for the person using Tandem."""


class RuntimeFailure(Exception):
    """Base class for every runtime error. `str(err)` is fit to show to a person."""

    code = "runtime_error"


class ModelFileError(RuntimeFailure):
    """The model file is missing, unreadable or not a GGUF file."""

    code = "model_file_error"


class InvalidModelFile(ModelFileError):
    """The file is not a valid GGUF model: wrong magic or version, damaged header, truncated."""

    code = "invalid_model_file"


class UnsafeChatTemplate(InvalidModelFile):
    """The model's chat template breaks a limit on what rendering a prompt may take (time, steps,
    output size, nesting): a broken or hostile template. `what` says which limit."""

    code = "unsafe_chat_template"

    def __init__(self, what: str):
        self.what = what
        super().__init__(
            f"This model's chat template {what}, so Tandem stopped it: laying out a conversation never "
            "takes that much. Use another copy of the model or a model with a standard template."
        )


class ModelLoadError(RuntimeFailure):
    """llama.cpp refused to load the model with the requested parameters."""

    code = "model_load_error"


class ContextOverflow(RuntimeFailure):
    """The prompt does not fit the context window."""

    code = "context_overflow"

    def __init__(self, prompt_tokens: int, n_ctx: int, at_least: bool = False, what: str | None = None):
        self.prompt_tokens = prompt_tokens
        self.n_ctx = n_ctx
        over = prompt_tokens - n_ctx + 1
        size = f"at least {prompt_tokens}" if at_least else f"{prompt_tokens}"
        if what is not None:  # an embedding input: no reply needs room
            super().__init__(f"{what} is {size} tokens long, but an embedding reads at most {n_ctx}. "
                             "Split the text into shorter pieces.")
            return
        super().__init__(
            f"The conversation is {size} tokens long but the model's context holds "
            f"{n_ctx} (with room for at least one reply token): {'at least ' if at_least else ''}{over} tokens too many. "
            "Start a new conversation, shorten the message, or load the model with a larger "
            "context length."
        )


class EngineClosed(RuntimeFailure):
    """The engine session was shut down before or while serving the request."""

    code = "engine_closed"


class ChatTemplateError(RuntimeFailure):
    """The model's chat template could not render these messages."""

    code = "chat_template_error"


class DraftModelError(RuntimeFailure):
    """The draft model for speculative decoding cannot be loaded or cannot serve this model."""

    code = "draft_unusable"


class Interrupted(RuntimeFailure):
    """The request was stopped while llama.cpp was working on it (not an error for the person)."""

    code = "cancelled"


class QueueFull(RuntimeFailure):
    """Too many requests are waiting for this model."""

    code = "queue_full"

    def __init__(self, waiting: int, retry_after_s: int):
        self.retry_after_s = retry_after_s
        super().__init__(
            f"{waiting} request{'s are' if waiting != 1 else ' is'} already waiting for this model. Try again in about "
            f"{retry_after_s} s, or stop a reply that is no longer needed."
        )


class ModelUnavailable(RuntimeFailure):
    """The model cannot be loaded now: what it needs is held by models in use, or it failed."""

    code = "model_unavailable"


class InvalidSampling(RuntimeFailure):
    """What the request asked of the sampler cannot be done: a grammar that does not parse, a
    logit bias for a token the model does not have. `param` names the request field."""

    code = "invalid_request"

    def __init__(self, message: str, param: str | None = None):
        self.param = param
        super().__init__(message)


class PoolFailure(RuntimeFailure):
    """A machine a pooled model's layers ran on went away, or the pool could not be loaded."""

    code = "pool_failed"
