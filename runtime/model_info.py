"""ModelInfo: what a model needs, from its GGUF header alone (shape, attention layout, tensor bytes)."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from tandem.runtime.errors import InvalidModelFile, ModelFileError, RuntimeFailure
from tandem.runtime.gguf import (MAX_LAYERS, GGUFHeader, StringArray, check_hparams, header_from_bytes, hparam,
                                 read_model_headers)

# Sliding-window layouts llama.cpp sets per architecture when the file carries no pattern:
# layer i uses the window when i % n < n - 1 (llama-model.cpp, set_swa_pattern).
SWA_PATTERN_BY_ARCH = {"gemma2": 2, "gemma3": 6, "cohere2": 4}
_LAYER_RE = re.compile(r"^blk\.(\d{1,9})\.")


@dataclass(frozen=True)
class ModelInfo:
    path: str | None
    name: str | None
    architecture: str
    file_type: str | None
    n_layer: int
    n_embd: int
    n_ff: int | None
    n_head: int
    n_head_kv: tuple[int, ...]  # per layer
    head_dim_k: int
    head_dim_v: int
    n_ctx_train: int | None
    rope_freq_base: float | None
    rope_dims: int | None
    rope_scaling: str | None
    rope_scaling_factor: float | None
    sliding_window: int | None
    swa_layers: tuple[bool, ...]  # per layer: True where the layer attends to a window only
    n_expert: int
    n_expert_used: int
    vocab_size: int | None
    tokenizer: str | None
    has_chat_template: bool
    file_size: int | None
    n_params: int
    tensor_types: dict[str, int]  # ggml type -> bytes
    layer_bytes: tuple[int, ...]  # bytes of blk.N.* per layer
    output_bytes: int  # output.weight + output_norm.*: placed with the last GPU layer
    token_embd_bytes: int
    other_bytes: int
    output_tied: bool  # no output.weight: the token embedding doubles as the output

    @property
    def weight_bytes(self) -> int:
        return sum(self.layer_bytes) + self.output_bytes + self.token_embd_bytes + self.other_bytes

    @property
    def dominant_type(self) -> str:
        return max(self.tensor_types, key=self.tensor_types.get) if self.tensor_types else "unknown"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["weight_bytes"] = self.weight_bytes
        d["dominant_type"] = self.dominant_type
        return d

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)


def _per_layer(value, n_layer: int, default: int) -> tuple[int, ...]:
    if value is None:
        return (default,) * n_layer
    if isinstance(value, tuple):
        return tuple(int(v) for v in value[:n_layer])
    return (int(value),) * n_layer


def _first(value):
    return (max(value) if value else 0) if isinstance(value, tuple) else value


def _number(kv: dict, key: str, kind=float):
    """A scalar setting that is a number, else None (a damaged optional setting is not worth
    refusing the model for, but must not reach the planner as a string or an array)."""
    v = kv.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
        return None
    return kind(v) if kind is not int or float(v).is_integer() else None


def _text(kv: dict, key: str, limit: int = 4096) -> str | None:
    v = kv.get(key)
    return v[:limit] if isinstance(v, str) else None


def describe(headers: list[GGUFHeader], path: str | None = None, file_size: int | None = None) -> ModelInfo:
    """Build ModelInfo from the header(s) of one model (several for a split model).

    Every failure is an InvalidModelFile saying what is wrong: a hostile header must not escape
    as a MemoryError or a TypeError and break whoever lists the installed models."""
    source = path or "the file"
    try:
        return _describe(headers, path, file_size, source)
    except RuntimeFailure:
        raise
    except (MemoryError, RecursionError, ArithmeticError, ValueError, TypeError, LookupError, AttributeError) as err:
        raise InvalidModelFile(
            f"{source}: its header describes no usable model ({type(err).__name__}: {err}); the file is damaged."
        ) from None


def _describe(headers: list[GGUFHeader], path: str | None, file_size: int | None, source: str) -> ModelInfo:
    kv = headers[0].metadata
    tensors = [t for h in headers for t in h.tensors]
    arch = kv.get("general.architecture")
    if not isinstance(arch, str):
        raise InvalidModelFile(f"{source} names no architecture (general.architecture); it is not a model.")
    check_hparams(kv, source)  # headers may come from anywhere (a cache, a test): check again here

    def a(key, default=None):
        return kv.get(f"{arch}.{key}", default)

    def h(key, default=None):
        return hparam(kv, key, source, default)

    n_layer = h("block_count", 0)
    n_embd = h("embedding_length", 0)
    n_head = int(_first(h("attention.head_count", 0)) or 0)
    n_head_kv = _per_layer(h("attention.head_count_kv"), n_layer, n_head)
    head_dim = n_embd // n_head if n_head else 0
    window = h("attention.sliding_window")
    pattern = a("attention.sliding_window_pattern")
    if isinstance(pattern, tuple):
        if len(pattern) > MAX_LAYERS:
            raise InvalidModelFile(f"{source}: {arch}.attention.sliding_window_pattern is longer than any model.")
        swa = tuple(bool(x) for x in pattern[:n_layer])
    elif window and arch in SWA_PATTERN_BY_ARCH:
        n = SWA_PATTERN_BY_ARCH[arch]
        swa = tuple(i % n < n - 1 for i in range(n_layer))
    else:
        swa = (bool(window),) * n_layer if window else (False,) * n_layer
    tokens = kv.get("tokenizer.ggml.tokens")
    vocab = h("vocab_size") or (tokens.count if isinstance(tokens, StringArray) else None)

    layer_bytes = [0] * n_layer
    output = token_embd = other = 0
    types: Counter = Counter()
    n_params = 0
    for t in tensors:
        types[t.ggml_type] += t.n_bytes
        n_params += t.n_elements
        m = _LAYER_RE.match(t.name)
        if m and int(m[1]) < n_layer:
            layer_bytes[int(m[1])] += t.n_bytes
        elif t.name.startswith("output"):
            output += t.n_bytes
        elif t.name.startswith("token_embd"):
            token_embd += t.n_bytes
        else:
            other += t.n_bytes
    file_type = kv.get("general.file_type")
    if isinstance(file_type, int) and not isinstance(file_type, bool):
        from gguf.constants import LlamaFileType

        try:
            file_type = LlamaFileType(file_type).name.removeprefix("MOSTLY_")
        except ValueError:
            file_type = str(file_type)
    elif not isinstance(file_type, str):
        file_type = None
    scaling = a("rope.scaling.type")
    return ModelInfo(
        path=path,
        name=_text(kv, "general.name"),
        architecture=arch,
        file_type=file_type,
        n_layer=n_layer,
        n_embd=n_embd,
        n_ff=_first(h("feed_forward_length")),
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=h("attention.key_length", head_dim),
        head_dim_v=h("attention.value_length", head_dim),
        n_ctx_train=h("context_length"),
        rope_freq_base=_number(kv, f"{arch}.rope.freq_base"),
        rope_dims=h("rope.dimension_count"),
        rope_scaling=scaling[:64] if isinstance(scaling, str) else None,
        rope_scaling_factor=_number(kv, f"{arch}.rope.scaling.factor"),
        sliding_window=int(window) if window else None,
        swa_layers=swa,
        n_expert=h("expert_count", 0) or 0,
        n_expert_used=h("expert_used_count", 0) or 0,
        vocab_size=int(vocab) if vocab else None,
        tokenizer=_text(kv, "tokenizer.ggml.model", 64),
        has_chat_template="tokenizer.chat_template" in kv,
        file_size=file_size,
        n_params=n_params,
        tensor_types=dict(types.most_common()),
        layer_bytes=tuple(layer_bytes),
        output_bytes=output,
        token_embd_bytes=token_embd,
        other_bytes=other,
        output_tied=not any(t.name == "output.weight" for t in tensors),
    )


def inspect_model(path: str | os.PathLike) -> ModelInfo:
    """Inspect a local model file (validated first: see runtime.gguf). Raises ModelFileError
    (InvalidModelFile for a damaged or hostile file), never anything else about the file."""
    headers = read_model_headers(path)
    p = Path(path).expanduser().resolve()
    from tandem.runtime.gguf import split_parts

    try:
        size = sum(part.stat().st_size for part in split_parts(p))
    except OSError as err:
        raise ModelFileError(f"Model file cannot be read: {p} ({err.strerror or err}).") from err
    return describe(headers, str(p), size)


def inspect_bytes(data: bytes, source: str = "remote file", file_size: int | None = None) -> ModelInfo:
    """Inspect the first bytes of a (remote) file; file_size, when known, checks the tensor table."""
    return describe([header_from_bytes(data, source, file_size)], None, file_size)
