"""Synthetic llama-architecture GGUF models of any shape, for tests and benchmarks.

The weights are random but valid quantized blocks (the text is noise; memory and speed are
real), the tokenizer is SmolLM2's real one, so llama.cpp loads and runs the file like any model.
`fill="zeros"` writes a sparse file instead: instant and free on disk, for load and memory tests
(all-zero weights read from holes are not a fair speed test). Hostile variants: a chat template
that tries to escape the Jinja sandbox, a file truncated inside its weights.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFWriter, GGMLQuantizationType, LlamaFileType
from gguf.constants import GGML_QUANT_SIZES

from tandem.runtime import embedded

HOSTILE_TEMPLATE = (
    "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    "{% for m in messages %}{{ m['content'] }}{% endfor %}"
)

QUANT_TYPES = {
    "F16": (GGMLQuantizationType.F16, LlamaFileType.MOSTLY_F16),
    "BF16": (GGMLQuantizationType.BF16, LlamaFileType.MOSTLY_BF16),
    "Q8_0": (GGMLQuantizationType.Q8_0, LlamaFileType.MOSTLY_Q8_0),
    "Q4_0": (GGMLQuantizationType.Q4_0, LlamaFileType.MOSTLY_Q4_0),
    "Q4_1": (GGMLQuantizationType.Q4_1, LlamaFileType.MOSTLY_Q4_1),
    "Q5_0": (GGMLQuantizationType.Q5_0, LlamaFileType.MOSTLY_Q5_0),
    "Q5_1": (GGMLQuantizationType.Q5_1, LlamaFileType.MOSTLY_Q5_1),
    "Q2_K": (GGMLQuantizationType.Q2_K, LlamaFileType.MOSTLY_Q2_K),
    "Q3_K": (GGMLQuantizationType.Q3_K, LlamaFileType.MOSTLY_Q3_K_M),
    "Q4_K": (GGMLQuantizationType.Q4_K, LlamaFileType.MOSTLY_Q4_K_M),
    "Q5_K": (GGMLQuantizationType.Q5_K, LlamaFileType.MOSTLY_Q5_K_M),
    "Q6_K": (GGMLQuantizationType.Q6_K, LlamaFileType.MOSTLY_Q6_K),
}
# Byte offsets of each block's f16 scale (d) and, where the type has one, its minimum (m / dmin):
# ggml's block layouts. The other bytes (quants, sub-block scales) may be anything.
_SCALE_OFFSETS = {"Q4_0": (0, None), "Q4_1": (0, 2), "Q5_0": (0, None), "Q5_1": (0, 2), "Q8_0": (0, None),
                  "Q2_K": (80, 82), "Q3_K": (108, None), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208, None)}
# How far a block's f16 scale strays from its tensor's typical one (standard deviation, in octaves):
# SmolLM2-135M's Q4_1 layers spread over about 1.3 octaves between their 5th and 95th percentiles,
# a normal distribution of 0.4. It matters to speed: ggml's x86 dot products look each block's
# scale up in a 256 KiB f16-to-f32 table, and a real model's thousands of distinct scales miss the
# L1 cache where one repeated scale never does (SmolLM2's own file decoded a token in 11.1 ms at
# one thread of an AMD EPYC, the same file with every scale set to one value in 8.1, all zeros 7.5).
SCALE_SPREAD_OCTAVES = 0.4
PATTERN_BLOCKS = 1 << 16


@dataclass(frozen=True)
class SynthSpec:
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_ctx_train: int = 4096
    quant: str = "Q4_0"
    n_vocab: int | None = None  # None: the tokenizer's 49152; more pads with control tokens
    tied_output: bool = False
    name: str = "synthetic"
    head_dim: int | None = None  # None: n_embd / n_head; another width as Gemma's or Qwen3's heads

    def __post_init__(self) -> None:
        if self.quant not in QUANT_TYPES:
            raise ValueError(f"quant must be one of {', '.join(QUANT_TYPES)}, got {self.quant!r}")
        if (self.head_dim is None and self.n_embd % self.n_head) or self.n_head % self.n_head_kv:
            raise ValueError("n_embd must divide by n_head, and n_head by n_head_kv")
        if self.head_dim is not None and (self.head_dim <= 0 or self.head_dim % 2):
            raise ValueError("head_dim must be a positive even number")
        block = GGML_QUANT_SIZES[QUANT_TYPES[self.quant][0]][0]
        if self.n_embd % block or self.n_ff % block or (self.n_head * self.heads_width) % block:
            raise ValueError(f"n_embd, n_ff and n_head x head_dim must be multiples of {block} for {self.quant}")

    @property
    def heads_width(self) -> int:
        """Each attention head's width."""
        return self.head_dim or self.n_embd // self.n_head


# Shapes of well-known models (vocabulary aside: SmolLM2's tokenizer is used for all).
PRESETS = {
    "tiny": SynthSpec(n_layer=2, n_embd=64, n_head=4, n_head_kv=2, n_ff=128, name="tiny"),
    "1b": SynthSpec(n_layer=16, n_embd=2048, n_head=32, n_head_kv=8, n_ff=8192, name="llama-1b-shape"),
    "3b": SynthSpec(n_layer=28, n_embd=3072, n_head=24, n_head_kv=8, n_ff=8192, name="llama-3b-shape"),
    "7b": SynthSpec(n_layer=32, n_embd=4096, n_head=32, n_head_kv=32, n_ff=11008, name="llama-2-7b-shape"),
    "8b": SynthSpec(n_layer=32, n_embd=4096, n_head=32, n_head_kv=8, n_ff=14336, name="llama-3-8b-shape"),
    "13b": SynthSpec(n_layer=40, n_embd=5120, n_head=40, n_head_kv=40, n_ff=13824, name="llama-2-13b-shape"),
}


def preset(name: str, **changes) -> SynthSpec:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return replace(PRESETS[name], **changes)


@lru_cache(maxsize=1)
def _tokenizer_fields() -> tuple:
    """SmolLM2's tokenizer metadata: (key, value, type, sub_type) for every tokenizer.* field.

    Read from the built-in model, or from the GGUF named by TANDEM_SYNTH_TOKENIZER (any file
    written by this module carries it: a "tiny" one is 5 MB, for machines without the built-in model).
    """
    source = os.environ.get("TANDEM_SYNTH_TOKENIZER") or embedded.default_model_path()
    reader = GGUFReader(source)
    fields = []
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            sub = field.types[1] if len(field.types) > 1 else None
            fields.append((key, field.contents(), field.types[0], sub))
    return tuple(fields)


def _tensor_layout(spec: SynthSpec, n_vocab: int):
    """(name, numpy-order shape (out, in), quantized?) for every tensor, in file order."""
    head_dim = spec.heads_width
    q, kv = spec.n_head * head_dim, spec.n_head_kv * head_dim
    out = [("token_embd.weight", (n_vocab, spec.n_embd), True)]
    for i in range(spec.n_layer):
        p = f"blk.{i}."
        out += [
            (p + "attn_norm.weight", (spec.n_embd,), False),
            (p + "attn_q.weight", (q, spec.n_embd), True),
            (p + "attn_k.weight", (kv, spec.n_embd), True),
            (p + "attn_v.weight", (kv, spec.n_embd), True),
            (p + "attn_output.weight", (spec.n_embd, q), True),
            (p + "ffn_norm.weight", (spec.n_embd,), False),
            (p + "ffn_gate.weight", (spec.n_ff, spec.n_embd), True),
            (p + "ffn_up.weight", (spec.n_ff, spec.n_embd), True),
            (p + "ffn_down.weight", (spec.n_embd, spec.n_ff), True),
        ]
    out.append(("output_norm.weight", (spec.n_embd,), False))
    if not spec.tied_output:
        out.append(("output.weight", (n_vocab, spec.n_embd), True))
    return out


def _byte_shape(shape, qtype) -> tuple[int, ...]:
    block, size = GGML_QUANT_SIZES[qtype]
    return (*shape[:-1], shape[-1] // block * size)


def _vocab_size(spec: SynthSpec) -> int:
    tokens = next(v for k, v, _, _ in _tokenizer_fields() if k == "tokenizer.ggml.tokens")
    return spec.n_vocab or len(tokens)


def _tensor_bytes(spec: SynthSpec, n_vocab: int | None = None) -> dict[str, int]:
    qtype = QUANT_TYPES[spec.quant][0]
    return {name: math.prod(_byte_shape(shape, qtype)) if quantized else math.prod(shape) * 4
            for name, shape, quantized in _tensor_layout(spec, n_vocab or _vocab_size(spec))}


def layer_bytes(spec: SynthSpec) -> int:
    """Bytes of the repeating layers' weights (blk.*), all of them."""
    block = GGML_QUANT_SIZES[QUANT_TYPES[spec.quant][0]][0]  # any vocabulary: the layers do not hold it
    return sum(b for name, b in _tensor_bytes(spec, n_vocab=block).items() if name.startswith("blk."))


def output_bytes(spec: SynthSpec) -> int:
    """Bytes of the weights read once per token after the layers: the output matrix (the token
    embeddings when tied) and its norm."""
    sizes = _tensor_bytes(spec)
    out = sizes.get("output.weight", sizes["token_embd.weight"])
    return out + sizes["output_norm.weight"]


def _random_tensor(rng, shape, qtype) -> np.ndarray:
    """Random weights with a sane scale (about 1/sqrt(fan-in)), as valid blocks of qtype whose
    scales vary from block to block as a real model's do (see SCALE_SPREAD_OCTAVES)."""
    fan_in = shape[-1]
    scale = 1.0 / math.sqrt(fan_in)
    if qtype in (GGMLQuantizationType.F16, GGMLQuantizationType.BF16):
        # 256 values evenly in +-2 scale, picked by random bytes (far faster than converting draws)
        levels = np.arange(-128, 128, dtype=np.float32) * np.float32(scale / 64)
        if qtype == GGMLQuantizationType.F16:
            table = levels.astype(np.float16).view(np.uint16)
        else:  # bfloat16: the high half of a float32
            table = (levels.view(np.uint32) >> 16).astype(np.uint16)
        picked = table[rng.integers(0, 256, size=shape, dtype=np.uint8)]
        return picked.view(np.float16) if qtype == GGMLQuantizationType.F16 else \
            picked.view(np.uint8).reshape(_byte_shape(shape, qtype))
    block, size = GGML_QUANT_SIZES[qtype]
    n_blocks = math.prod(shape) // block
    # PATTERN_BLOCKS random blocks, repeated over the tensor: as fast to write as the bytes move
    raw = rng.integers(0, 256, size=(min(n_blocks, PATTERN_BLOCKS), size), dtype=np.uint8)
    d_at, m_at = _SCALE_OFFSETS[qtype.name]
    base = scale / (8 if qtype != GGMLQuantizationType.Q8_0 else 64)
    d = (base * np.exp2(rng.normal(0.0, SCALE_SPREAD_OCTAVES, len(raw)))).astype(np.float16)
    raw[:, d_at:d_at + 2] = d.view(np.uint8).reshape(-1, 2)
    if m_at is not None:  # the block's minimum, after the scale: about -8 scales
        m = (-8 * d.astype(np.float32) * np.exp2(rng.normal(0.0, SCALE_SPREAD_OCTAVES / 2, len(raw))))
        raw[:, m_at:m_at + 2] = m.astype(np.float16).view(np.uint8).reshape(-1, 2)
    if len(raw) < n_blocks:
        raw = np.resize(raw, (n_blocks, size))
    return raw.reshape(_byte_shape(shape, qtype))


def write_model(
    path: str | os.PathLike,
    spec: SynthSpec,
    *,
    fill: str = "random",
    seed: int = 0,
    chat_template: str | None = None,
    truncate_to: int | None = None,
) -> Path:
    """Write a GGUF for `spec` and return its path. See the module docstring for the options."""
    if fill not in ("random", "zeros"):
        raise ValueError("fill must be 'random' or 'zeros'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    qtype, ftype = QUANT_TYPES[spec.quant]
    tokenizer = _tokenizer_fields()
    base_vocab = next(len(v) for k, v, _, _ in tokenizer if k == "tokenizer.ggml.tokens")
    n_vocab = spec.n_vocab or base_vocab
    if n_vocab < base_vocab:
        raise ValueError(f"n_vocab must be at least the tokenizer's {base_vocab}")

    w = GGUFWriter(path, "llama")
    w.add_name(spec.name)
    w.add_file_type(ftype)
    w.add_block_count(spec.n_layer)
    w.add_context_length(spec.n_ctx_train)
    w.add_embedding_length(spec.n_embd)
    w.add_feed_forward_length(spec.n_ff)
    w.add_head_count(spec.n_head)
    w.add_head_count_kv(spec.n_head_kv)
    w.add_rope_dimension_count(spec.heads_width)
    if spec.head_dim is not None:
        w.add_key_length(spec.head_dim)
        w.add_value_length(spec.head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    for key, value, vtype, sub in tokenizer:
        if key == "tokenizer.chat_template" and chat_template is not None:
            value = chat_template
        if n_vocab > base_vocab and key == "tokenizer.ggml.tokens":
            value = list(value) + [f"<|synthetic_{i}|>" for i in range(n_vocab - base_vocab)]
        if n_vocab > base_vocab and key == "tokenizer.ggml.token_type":
            value = list(value) + [3] * (n_vocab - base_vocab)  # control tokens
        w.add_key_value(key, value, vtype, sub_type=sub)

    layout = _tensor_layout(spec, n_vocab)
    for name, shape, quantized in layout:
        t = qtype if quantized else GGMLQuantizationType.F32
        nbytes = math.prod(_byte_shape(shape, t)) if quantized else math.prod(shape) * 4
        if quantized and t != GGMLQuantizationType.F16:
            w.add_tensor_info(name, _byte_shape(shape, t), np.dtype(np.uint8), nbytes, raw_dtype=t)
        else:
            w.add_tensor_info(name, shape, np.dtype(np.float16 if quantized else np.float32), nbytes)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    if fill == "zeros":
        fout = w.fout[0]
        end = GGUFWriter.ggml_pad(fout.tell(), w.data_alignment)
        for name, ti in w.tensors[0].items():
            end += GGUFWriter.ggml_pad(ti.nbytes, w.data_alignment)
        fout.truncate(end)  # a sparse file: the data reads as zeros
    else:
        for name, shape, quantized in layout:
            if quantized:
                w.write_tensor_data(_random_tensor(rng, shape, qtype))
            else:
                w.write_tensor_data(np.ones(shape, dtype=np.float32))
    w.close()
    if truncate_to is not None:
        os.truncate(path, truncate_to)
    return path
