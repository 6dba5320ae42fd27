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


class ModelLoadError(RuntimeFailure):
    """llama.cpp refused to load the model with the requested parameters."""

    code = "model_load_error"


class ContextOverflow(RuntimeFailure):
    """The prompt does not fit the context window."""

    code = "context_overflow"

    def __init__(self, prompt_tokens: int, n_ctx: int):
        self.prompt_tokens = prompt_tokens
        self.n_ctx = n_ctx
        over = prompt_tokens - n_ctx + 1
        super().__init__(
            f"The conversation is {prompt_tokens} tokens long but the model's context holds "
            f"{n_ctx} (with room for at least one reply token): {over} tokens too many. "
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
