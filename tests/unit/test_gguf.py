"""GGUF header reading and validation, on the real models and on hand-made damaged files."""

import struct

import pytest

from tandem.runtime.errors import InvalidModelFile, ModelFileError
from tandem.runtime.gguf import (HeaderIncomplete, SkippedArray, StringArray, check_model_file, header_from_bytes,
                                 read_model_headers)
from tandem.runtime.model_info import inspect_bytes, inspect_model

F32 = 0


def gguf_bytes(tensors, kv=None, version=3, n_tensors=None, data=b""):
    """A minimal GGUF: kv is {key: str}, tensors [(name, shape, ggml_type, offset)]."""
    kv = {"general.architecture": "llama", "llama.block_count": None, **(kv or {})}
    kv = {k: v for k, v in kv.items() if v is not None}

    def s(text):
        b = text.encode()
        return struct.pack("<Q", len(b)) + b

    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors, len(kv))
    for k, v in kv.items():
        out += s(k) + struct.pack("<I", 8) + s(v)
    for name, shape, ttype, offset in tensors:
        out += s(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape)
        out += struct.pack("<IQ", ttype, offset)
    out += b"\0" * (-len(out) % 32)
    return out + data


def write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_smollm2(model_path):
    info = inspect_model(model_path)
    assert (info.architecture, info.n_layer, info.n_embd, info.n_ff) == ("llama", 30, 576, 1536)
    assert info.n_head == 9 and info.n_head_kv == (3,) * 30
    assert (info.head_dim_k, info.head_dim_v) == (64, 64)
    assert (info.n_ctx_train, info.vocab_size, info.tokenizer) == (8192, 49152, "gpt2")
    assert info.has_chat_template and info.output_tied
    assert info.sliding_window is None and not any(info.swa_layers)
    assert info.n_expert == 0 and info.rope_freq_base == 100000.0
    assert info.file_type == "Q4_1" and info.dominant_type == "Q4_1"
    assert len(set(info.layer_bytes)) == 1 and info.layer_bytes[0] > 0
    assert info.weight_bytes <= info.file_size < info.weight_bytes + 8 << 20  # header is the rest
    assert 134_000_000 < info.n_params < 136_000_000


def test_bulky_metadata_is_measured_not_kept(model_path):
    [header] = read_model_headers(model_path)
    kv = header.metadata
    assert kv["tokenizer.ggml.tokens"] == StringArray(49152) and kv["tokenizer.ggml.merges"] == StringArray(48900)
    assert kv["tokenizer.ggml.token_type"] == SkippedArray(49152)  # 49,152 numbers nothing reads
    assert kv["tokenizer.chat_template"].startswith("{% for message in messages %}")
    assert kv["llama.block_count"] == 30 and kv["general.name"].startswith("Smollm2")


def test_gemma3_sliding_window_layout(gemma_path):
    info = inspect_model(gemma_path)
    assert (info.architecture, info.n_layer, info.n_head, info.n_head_kv[0]) == ("gemma3", 18, 4, 1)
    assert (info.head_dim_k, info.head_dim_v) == (256, 256)
    assert info.sliding_window == 512
    # every sixth layer attends globally, the other five to the window
    assert info.swa_layers == tuple(i % 6 != 5 for i in range(18))
    assert info.vocab_size == 262144 and info.n_ctx_train == 32768
    assert info.file_type == "Q4_K_M"


def test_first_bytes_of_a_remote_file_are_enough(model_path):
    whole = inspect_model(model_path)
    data = model_path.read_bytes()
    with pytest.raises(HeaderIncomplete) as info:
        inspect_bytes(data[:4096])
    # fetch more until the header is complete, as the model manager will with Range requests
    have = 4096
    while True:
        try:
            remote = inspect_bytes(data[:have], file_size=len(data))
            break
        except HeaderIncomplete as err:
            assert err.need > have
            have = max(err.need, have * 2)
    assert have < len(data) // 10
    assert remote.layer_bytes == whole.layer_bytes and remote.n_head_kv == whole.n_head_kv
    assert info.value.have <= 4096


def test_truncated_download_is_rejected_naming_the_tensor(tmp_path, model_path):
    cut = write(tmp_path, "smol.gguf", model_path.read_bytes()[: 50_000_000])
    with pytest.raises(InvalidModelFile, match=r"smol.gguf is truncated: tensor 'blk\.\d+\.\w+\.weight' ends at byte"):
        check_model_file(cut)


def test_truncated_inside_the_header(tmp_path, model_path):
    cut = write(tmp_path, "h.gguf", model_path.read_bytes()[:1000])
    with pytest.raises(InvalidModelFile, match="truncated inside its header"):
        check_model_file(cut)


def test_wrong_magic_and_version(tmp_path):
    with pytest.raises(InvalidModelFile, match="not a GGUF file"):
        check_model_file(write(tmp_path, "zip.gguf", b"PK\x03\x04" + b"\0" * 40))
    with pytest.raises(InvalidModelFile, match="GGUF version 99"):
        check_model_file(write(tmp_path, "v.gguf", gguf_bytes([], version=99)))


def test_duplicate_tensor_names(tmp_path):
    data = gguf_bytes([("a", (32,), F32, 0), ("a", (32,), F32, 128)], data=b"\0" * 256)
    with pytest.raises(InvalidModelFile, match="names tensor 'a' twice"):
        check_model_file(write(tmp_path, "dup.gguf", data))


def test_hostile_counts_and_types(tmp_path):
    with pytest.raises(InvalidModelFile, match="not plausible"):
        header_from_bytes(gguf_bytes([], n_tensors=1 << 40))
    with pytest.raises(InvalidModelFile, match="cannot fit"):  # within the cap, but not in this file
        check_model_file(write(tmp_path, "many.gguf", gguf_bytes([], n_tensors=100_000)))
    with pytest.raises(InvalidModelFile, match="unknown type 999"):
        header_from_bytes(gguf_bytes([("w", (32,), 999, 0)]))
    with pytest.raises(InvalidModelFile, match="dimensions"):
        header_from_bytes(gguf_bytes([("w", (1, 1, 1, 1, 1), F32, 0)]))


def test_missing_and_non_files(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        check_model_file(tmp_path / "nope.gguf")
    with pytest.raises(ModelFileError, match="not a file"):
        check_model_file(tmp_path)


def test_split_model(tmp_path):
    part1 = gguf_bytes([("token_embd.weight", (32,), F32, 0)], kv={"split.count": None}, data=b"\0" * 128)
    part2 = gguf_bytes([("output.weight", (32,), F32, 0)], data=b"\0" * 128)
    first = write(tmp_path, "m-00001-of-00002.gguf", part1)
    with pytest.raises(InvalidModelFile, match="missing m-00002-of-00002.gguf"):
        check_model_file(first)
    write(tmp_path, "m-00002-of-00002.gguf", part2)
    info = inspect_model(first)
    assert info.token_embd_bytes == 128 and info.output_bytes == 128 and not info.output_tied
    assert info.file_size == len(part1) + len(part2)
    write(tmp_path, "m-00002-of-00002.gguf", gguf_bytes([("token_embd.weight", (32,), F32, 0)], data=b"\0" * 128))
    with pytest.raises(InvalidModelFile, match="repeats tensor 'token_embd.weight'"):
        check_model_file(first)
