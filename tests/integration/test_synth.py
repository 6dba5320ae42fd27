"""Synthetic models: valid GGUFs of any shape that llama.cpp loads and runs."""

import pytest

from tandem.runtime.engine import ModelWorker, LoadParams, SamplingParams
from tandem.runtime.errors import ChatTemplateError, InvalidModelFile
from tandem.runtime.model_info import inspect_model
from tandem.runtime.synth import HOSTILE_TEMPLATE, SynthSpec, layer_bytes, output_bytes, preset, write_model

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


def test_shape_options(tmp_path):
    spec = SynthSpec(n_layer=3, n_embd=128, n_head=8, n_head_kv=1, n_ff=256, n_vocab=49200, tied_output=True)
    info = inspect_model(write_model(tmp_path / "odd.gguf", spec))
    assert (info.n_layer, info.n_embd, info.n_head, info.n_head_kv[0], info.n_ff) == (3, 128, 8, 1, 256)
    assert info.vocab_size == 49200 and info.output_tied
    assert run(tmp_path / "odd.gguf").stats.completion_tokens == 6


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
