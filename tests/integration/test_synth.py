"""Synthetic models: valid GGUFs of any shape that llama.cpp loads and runs."""

import pytest

from tandem.runtime.engine import ModelWorker, LoadParams, SamplingParams
from tandem.runtime.errors import ChatTemplateError, InvalidModelFile
from tandem.runtime.model_info import inspect_model
from tandem.runtime.synth import HOSTILE_TEMPLATE, QUANT_TYPES, SynthSpec, layer_bytes, output_bytes, preset, write_model

HI = [{"role": "user", "content": "hi"}]


def run(path, n_ctx=256, tokens=6):
    session = ModelWorker.open(LoadParams(path, n_ctx=n_ctx))
    try:
        return session.complete(HI, SamplingParams(temperature=0, max_tokens=tokens))
    finally:
        session.close()


@pytest.mark.parametrize("quant", ["Q4_0", "Q4_1", "Q8_0", "F16"])
def test_tiny_models_of_each_quant_type_run(tmp_path, quant):
    path = write_model(tmp_path / f"tiny-{quant}.gguf", preset("tiny", quant=quant))
    info = inspect_model(path)
    assert info.dominant_type == quant and info.n_layer == 2 and info.n_head_kv == (2, 2)
    r = run(path)
    assert r.stats.completion_tokens == 6 and r.finish_reason == "length"


@pytest.mark.parametrize("quant", ["BF16", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"])
def test_every_other_weight_type_writes_blocks_llama_cpp_runs(tmp_path, quant):
    """The engine micro-benchmark times slices of these types (K-quant blocks are 256 wide)."""
    spec = SynthSpec(n_layer=2, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, quant=quant)
    path = write_model(tmp_path / f"{quant}.gguf", spec)
    info = inspect_model(path)
    assert info.dominant_type == quant
    # every matrix is of the type: the layers' (less their two F32 norms each), the token
    # embeddings and the output (less its F32 norm)
    norm = 256 * 4
    assert info.tensor_types[quant] == layer_bytes(spec) - 2 * 2 * norm + 2 * (output_bytes(spec) - norm)
    r = run(path)
    assert r.stats.completion_tokens == 6


def _block_scales(path, quant="Q4_1"):
    """Every block's f16 scale (d) of the file's tensors of this type, per tensor."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.constants import GGML_QUANT_SIZES

    qtype = QUANT_TYPES[quant][0]
    size = GGML_QUANT_SIZES[qtype][1]
    return {t.name: np.asarray(t.data).reshape(-1, size)[:, :2].copy().view(np.float16).ravel().astype(np.float32)
            for t in GGUFReader(path).tensors if t.tensor_type == qtype}


def test_block_scales_vary_from_block_to_block_as_a_real_models_do(tmp_path):
    """ggml's x86 dot products look each block's f16 scale up in a 256 KiB table: a file of one
    repeated scale decodes a third faster than a real model (docs/planner.md), so a synthetic file
    stands for a real one only if its scales spread as the real model's do."""
    import numpy as np

    from tandem.runtime import embedded

    real = _block_scales(embedded.default_model_path())
    spec = SynthSpec(n_layer=4, n_embd=576, n_head=9, n_head_kv=3, n_ff=1536, quant="Q4_1", tied_output=True)
    synth = _block_scales(write_model(tmp_path / "smol-shape.gguf", spec))

    def spread(d):  # octaves between the 5th and 95th percentile of a tensor's scales
        lo, hi = np.percentile(np.log2(np.abs(d[d != 0])), [5, 95])
        return hi - lo

    real_spread = np.median([spread(d) for d in real.values()])
    for name, d in synth.items():
        assert 0.6 * real_spread <= spread(d) <= 1.6 * real_spread, (name, spread(d), real_spread)
        assert len(np.unique(d)) >= min(len(d), 500), name
    assert np.all(np.isfinite(np.concatenate(list(synth.values()))))


def test_shape_options(tmp_path):
    spec = SynthSpec(n_layer=3, n_embd=128, n_head=8, n_head_kv=1, n_ff=256, n_vocab=49200, tied_output=True)
    info = inspect_model(write_model(tmp_path / "odd.gguf", spec))
    assert (info.n_layer, info.n_embd, info.n_head, info.n_head_kv[0], info.n_ff) == (3, 128, 8, 1, 256)
    assert info.vocab_size == 49200 and info.output_tied
    assert run(tmp_path / "odd.gguf").stats.completion_tokens == 6


def test_heads_of_their_own_width(tmp_path):
    """Gemma's and Qwen3's heads are not n_embd / n_head wide: the file says so and llama.cpp runs it."""
    spec = SynthSpec(n_layer=2, n_embd=640, n_head=4, n_head_kv=1, n_ff=2048, quant="Q8_0", head_dim=256)
    info = inspect_model(write_model(tmp_path / "wide-heads.gguf", spec))
    assert (info.n_embd, info.n_head, info.head_dim_k, info.head_dim_v) == (640, 4, 256, 256)
    assert run(tmp_path / "wide-heads.gguf").stats.completion_tokens == 6
    with pytest.raises(ValueError, match="head_dim"):
        SynthSpec(n_layer=1, n_embd=64, n_head=4, n_head_kv=4, n_ff=64, head_dim=7)


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match="quant"):
        SynthSpec(n_layer=1, n_embd=64, n_head=4, n_head_kv=4, n_ff=64, quant="IQ2_XS")
    with pytest.raises(ValueError, match="multiples of 256 for Q2_K"):  # a K-quant block is 256 wide
        SynthSpec(n_layer=1, n_embd=64, n_head=4, n_head_kv=4, n_ff=64, quant="Q2_K")
    with pytest.raises(ValueError, match="divide"):
        SynthSpec(n_layer=1, n_embd=64, n_head=5, n_head_kv=5, n_ff=64)
    with pytest.raises(ValueError, match="preset"):
        preset("70x")


def test_1b_shape_loads_and_decodes(tmp_path):
    path = write_model(tmp_path / "1b.gguf", preset("1b"))
    info = inspect_model(path)
    assert info.n_layer == 16 and 600e6 < info.weight_bytes < 700e6
    r = run(path, tokens=4)
    assert r.stats.completion_tokens == 4


def test_8b_shape_loads(tmp_path):
    path = write_model(tmp_path / "8b.gguf", preset("8b"), fill="zeros")  # sparse: no disk blocks
    info = inspect_model(path)
    assert info.n_layer == 32 and info.n_head_kv == (8,) * 32
    assert 4.0e9 < info.weight_bytes < 4.4e9
    session = ModelWorker.open(LoadParams(path, n_ctx=256))
    session.close()


def test_hostile_chat_template_cannot_escape_the_sandbox(tmp_path):
    path = write_model(tmp_path / "evil.gguf", preset("tiny"), chat_template=HOSTILE_TEMPLATE)
    assert inspect_model(path).has_chat_template
    with pytest.raises(ChatTemplateError, match="unsafe"):
        run(path)


def test_truncated_synthetic_file_is_rejected_before_llama_cpp(tmp_path):
    path = write_model(tmp_path / "cut.gguf", preset("tiny"), truncate_to=3_000_000)
    with pytest.raises(InvalidModelFile, match="truncated"):
        ModelWorker.open(LoadParams(path))
