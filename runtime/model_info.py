"""ModelInfo: what a model needs, from its GGUF header alone (shape, attention layout, tensor bytes)."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from tandem.runtime.gguf import GGUFHeader, StringArray, header_from_bytes, read_model_headers

# Sliding-window layouts llama.cpp sets per architecture when the file carries no pattern:
# layer i uses the window when i % n < n - 1 (llama-model.cpp, set_swa_pattern).
SWA_PATTERN_BY_ARCH = {"gemma2": 2, "gemma3": 6, "cohere2": 4}
_LAYER_RE = re.compile(r"^blk\.(\d+)\.")


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
    return max(value) if isinstance(value, tuple) else value


def describe(headers: list[GGUFHeader], path: str | None = None, file_size: int | None = None) -> ModelInfo:
    """Build ModelInfo from the header(s) of one model (several for a split model)."""
    kv = headers[0].metadata
    tensors = [t for h in headers for t in h.tensors]
    arch = kv.get("general.architecture")
    if not isinstance(arch, str):
        from tandem.runtime.errors import InvalidModelFile

        raise InvalidModelFile(f"{path or 'the file'} names no architecture (general.architecture); it is not a model.")

    def a(key, default=None):
        return kv.get(f"{arch}.{key}", default)

    n_layer = int(a("block_count", 0))
    n_embd = int(a("embedding_length", 0))
    n_head = int(_first(a("attention.head_count", 0)) or 0)
    n_head_kv = _per_layer(a("attention.head_count_kv"), n_layer, n_head)
    head_dim = n_embd // n_head if n_head else 0
    window = a("attention.sliding_window")
    pattern = a("attention.sliding_window_pattern")
    if isinstance(pattern, tuple):
        swa = tuple(bool(x) for x in pattern[:n_layer])
    elif window and arch in SWA_PATTERN_BY_ARCH:
        n = SWA_PATTERN_BY_ARCH[arch]
        swa = tuple(i % n < n - 1 for i in range(n_layer))
    else:
        swa = (bool(window),) * n_layer if window else (False,) * n_layer
    tokens = kv.get("tokenizer.ggml.tokens")
    vocab = a("vocab_size") or (tokens.count if isinstance(tokens, StringArray) else None)

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
    if isinstance(file_type, int):
        from gguf.constants import LlamaFileType

        try:
            file_type = LlamaFileType(file_type).name.removeprefix("MOSTLY_")
        except ValueError:
            file_type = str(file_type)
    scaling = a("rope.scaling.type")
    return ModelInfo(
        path=path,
        name=kv.get("general.name"),
        architecture=arch,
        file_type=file_type,
        n_layer=n_layer,
        n_embd=n_embd,
        n_ff=_first(a("feed_forward_length")),
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=int(a("attention.key_length", head_dim)),
        head_dim_v=int(a("attention.value_length", head_dim)),
        n_ctx_train=a("context_length"),
        rope_freq_base=a("rope.freq_base"),
        rope_dims=a("rope.dimension_count"),
        rope_scaling=scaling if isinstance(scaling, str) else None,
        rope_scaling_factor=a("rope.scaling.factor"),
        sliding_window=int(window) if window else None,
        swa_layers=swa,
        n_expert=int(a("expert_count", 0) or 0),
        n_expert_used=int(a("expert_used_count", 0) or 0),
        vocab_size=int(vocab) if vocab else None,
        tokenizer=kv.get("tokenizer.ggml.model"),
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
    """Inspect a local model file (validated first: see runtime.gguf)."""
    headers = read_model_headers(path)
    p = Path(path).expanduser().resolve()
    from tandem.runtime.gguf import split_parts

    size = sum(part.stat().st_size for part in split_parts(p))
    return describe(headers, str(p), size)


def inspect_bytes(data: bytes, source: str = "remote file", file_size: int | None = None) -> ModelInfo:
    """Inspect the first bytes of a (remote) file; file_size, when known, checks the tensor table."""
    return describe([header_from_bytes(data, source, file_size)], None, file_size)
