"""A GGUF header's counts and sizes are checked against the file and against sane caps before
anything is allocated for them, and every failure of inspection is an InvalidModelFile with a
reason: never a MemoryError, OverflowError, struct.error or anything else that would escape."""

import random
import struct
import tracemalloc

import pytest

from tandem.runtime.errors import InvalidModelFile, ModelFileError
from tandem.runtime.gguf import (MAX_ARRAY, MAX_KEPT_ARRAY, MAX_LAYERS, MAX_TENSORS, GGUFHeader, HeaderIncomplete,
                                 LongString, SkippedArray, check_model_file, header_from_bytes)
from tandem.runtime.model_info import describe, inspect_bytes, inspect_model
from tandem.runtime.synth import preset, write_model

U8, U32, I32, F32, BOOL, STRING, ARRAY, U64 = 0, 4, 5, 6, 7, 8, 9, 10
T_F32 = 0


def s(text: str) -> bytes:
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


def kv(key: str, vtype: int, payload: bytes) -> bytes:
    return s(key) + struct.pack("<I", vtype) + payload


def u32(key, v):
    return kv(key, U32, struct.pack("<I", v))


def u64(key, v):
    return kv(key, U64, struct.pack("<Q", v))


def text(key, v):
    return kv(key, STRING, s(v))


def array(key, item_type, n, payload=b""):
    return kv(key, ARRAY, struct.pack("<IQ", item_type, n) + payload)


def tensor(name, shape, ttype=T_F32, offset=0):
    return s(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape) + \
        struct.pack("<IQ", ttype, offset)


def gguf(kvs=None, tensors=(), n_kv=None, n_tensors=None, data=b"\0" * 256, base=True) -> bytes:
    """A GGUF with a small llama model's keys first (base) and then kvs; counts may lie."""
    kvs = ([text("general.architecture", "llama"), u32("llama.block_count", 2), u32("llama.embedding_length", 64),
            u32("llama.attention.head_count", 4)] if base else []) + list(kvs or [])
    tensors = list(tensors) or [tensor("blk.0.attn_q.weight", (32,)), tensor("blk.1.attn_q.weight", (32,), offset=128)]
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors) if n_tensors is None else n_tensors,
                                len(kvs) if n_kv is None else n_kv)
    out += b"".join(kvs) + b"".join(tensors)
    out += b"\0" * (-len(out) % 32)
    return out + data


def write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def refused(data: bytes, tmp_path, match: str):
    """The same refusal from the local path (file) and the remote path (the hub's prefix reader)."""
    peak = 0
    for attempt in ("local", "remote"):
        tracemalloc.start()
        try:
            with pytest.raises(InvalidModelFile, match=match):
                if attempt == "local":
                    inspect_model(write(tmp_path, "hostile.gguf", data))
                else:
                    inspect_bytes(data, "hostile.gguf", file_size=len(data))
            peak = max(peak, tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    assert peak < 16 << 20, f"inspecting a hostile header allocated {peak >> 20} MB"


def test_a_sane_small_header_is_described(tmp_path):
    info = inspect_model(write(tmp_path, "ok.gguf", gguf()))
    assert (info.n_layer, info.n_embd, info.n_head, len(info.layer_bytes)) == (2, 64, 4, 2)


def test_huge_block_count(tmp_path):
    data = gguf([text("general.architecture", "llama"), u64("llama.block_count", 1 << 40)], base=False)
    refused(data, tmp_path, r"llama\.block_count is 1099511627776, not a size from 0 to 4,096")
    refused(gguf([text("general.architecture", "llama"), u32("llama.block_count", MAX_LAYERS + 1)], base=False),
            tmp_path, "block_count")
    edge = inspect_model(write(tmp_path, "edge.gguf", gguf(
        [text("general.architecture", "llama"), u32("llama.block_count", MAX_LAYERS)], base=False)))
    assert edge.n_layer == MAX_LAYERS and len(edge.layer_bytes) == MAX_LAYERS
    # the importer's check refuses it too, before the file is ever registered
    with pytest.raises(InvalidModelFile, match="block_count"):
        check_model_file(write(tmp_path, "b.gguf", gguf([text("general.architecture", "llama"),
                                                         u64("llama.block_count", 1 << 40)], base=False)))


@pytest.mark.parametrize("key,value,match", [
    ("llama.embedding_length", 1 << 40, "embedding_length"),
    ("llama.attention.head_count", 1 << 33, "head_count"),
    ("llama.attention.head_count_kv", 1 << 33, "head_count_kv"),
    ("llama.context_length", 1 << 50, "context_length"),
    ("llama.expert_count", 1 << 40, "expert_count"),
    ("llama.vocab_size", 1 << 40, "vocab_size"),
])
def test_other_sizes_are_bounded(tmp_path, key, value, match):
    refused(gguf([u64(key, value)]), tmp_path, match)


def test_per_layer_arrays_are_bounded(tmp_path):
    n = MAX_LAYERS + 1
    refused(gguf([array("llama.attention.head_count_kv", U32, n, struct.pack(f"<{n}I", *([1] * n)))]),
            tmp_path, "per-layer values")
    refused(gguf([array("llama.context_length", U32, 2, struct.pack("<2I", 1, 2))]), tmp_path, "is an array")
    ok = inspect_model(write(tmp_path, "kv.gguf", gguf([array("llama.attention.head_count_kv", U32, 2,
                                                              struct.pack("<2I", 2, 1))])))
    assert ok.n_head_kv == (2, 1)


def test_huge_tensor_count(tmp_path):
    refused(gguf(n_tensors=1 << 40), tmp_path, "tensor count of 1,099,511,627,776 is not plausible")
    refused(gguf(n_tensors=MAX_TENSORS), tmp_path, "tensor.* cannot fit")
    # a remote prefix without the file's size: more bytes are needed, not a verdict
    with pytest.raises(HeaderIncomplete):
        header_from_bytes(b"GGUF" + struct.pack("<IQQ", 3, MAX_TENSORS, 0) + s("blk.0.attn_q.weight"))


def test_huge_metadata_count(tmp_path):
    refused(gguf(n_kv=1 << 40), tmp_path, "metadata count of 1,099,511,627,776 is not plausible")
    refused(gguf(n_kv=60_000), tmp_path, "cannot fit")


def test_huge_array_length(tmp_path):
    refused(gguf([array("tokenizer.ggml.scores", F32, 1 << 40)]), tmp_path, "array length .* not plausible")
    refused(gguf([array("tokenizer.ggml.scores", F32, MAX_ARRAY)]), tmp_path, "array length .* cannot fit")
    refused(gguf([array("tokenizer.ggml.tokens", STRING, MAX_ARRAY)]), tmp_path, "array length .* cannot fit")
    refused(gguf([array("tokenizer.ggml.tokens", ARRAY, 3)]), tmp_path, "unknown metadata array type")


def test_long_arrays_and_strings_are_skipped_not_kept(tmp_path):
    n = MAX_KEPT_ARRAY + 1
    template = "{{ messages }}" * 100_000
    data = gguf([array("tokenizer.ggml.token_type", I32, n, b"\1\0\0\0" * n),
                 text("tokenizer.chat_template", template)])
    header = header_from_bytes(data, file_size=len(data))
    assert header.metadata["tokenizer.ggml.token_type"] == SkippedArray(n)
    assert header.metadata["tokenizer.chat_template"] == LongString(len(template))
    assert inspect_model(write(tmp_path, "long.gguf", data)).has_chat_template


def test_huge_string_lengths(tmp_path):
    refused(gguf([kv("general.name", STRING, struct.pack("<Q", 1 << 60))]), tmp_path, "string length .* not plausible")
    refused(gguf([kv("general.name", STRING, struct.pack("<Q", 1 << 25))]), tmp_path, "cannot fit|truncated")
    refused(gguf([s("k" * 70_000) + struct.pack("<I", U32) + b"\0" * 4]), tmp_path, "key length .* not plausible")
    refused(gguf(tensors=[tensor("t" * 2000, (32,))]), tmp_path, "tensor name length .* not plausible")


def test_damaged_tensor_entries(tmp_path):
    refused(gguf(tensors=[tensor("w", (1 << 62, 1 << 62))]), tmp_path, "too large")
    refused(gguf(tensors=[tensor("w", ())]), tmp_path, "dimensions")
    refused(gguf(tensors=[tensor("w", (32,), ttype=999)]), tmp_path, "unknown type 999")
    refused(gguf(tensors=[tensor("w", (32,), offset=1 << 40)]), tmp_path, "truncated")


def test_odd_metadata(tmp_path):
    refused(gguf([text("general.architecture", "llama"), text("llama.block_count", "30")], base=False),
            tmp_path, "block_count is '30'")
    refused(gguf([u32("general.architecture", 7)], base=False), tmp_path, "architecture")
    refused(gguf([u32("general.alignment", 3)]), tmp_path, "power of two")
    refused(gguf([u32("general.alignment", 1 << 31)]), tmp_path, "power of two")
    refused(gguf([u32("llama.block_count", 3)]), tmp_path, "twice")
    odd = inspect_model(write(tmp_path, "odd.gguf", gguf([u32("general.name", 5), kv("llama.rope.freq_base", STRING,
                                                                                   s("fast"))])))
    assert odd.name is None and odd.rope_freq_base is None


def test_describe_checks_headers_from_anywhere():
    header = GGUFHeader(3, {"general.architecture": "llama", "llama.block_count": 10 ** 12}, (), 0, 0)
    with pytest.raises(InvalidModelFile, match="block_count"):
        describe([header])
    header = GGUFHeader(3, {"general.architecture": "llama", "llama.block_count": (1, 2)}, (), 0, 0)
    with pytest.raises(InvalidModelFile, match="block_count is an array"):
        describe([header])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("tiny") / "tiny.gguf", preset("tiny")).read_bytes()


def test_a_file_truncated_anywhere_is_an_invalid_model_file(tmp_path, tiny):
    header_end = header_from_bytes(tiny, file_size=len(tiny)).data_offset
    cuts = [0, 3, 4, 7, 8, 23, 24, 100, 1000, 10_000, 100_000, header_end - 1, header_end + 1, len(tiny) - 1]
    for cut in cuts:
        path = write(tmp_path, "cut.gguf", tiny[:cut])
        with pytest.raises(InvalidModelFile, match="truncated|not a GGUF"):
            check_model_file(path)
        with pytest.raises(InvalidModelFile):
            inspect_model(path)


def test_random_damage_never_escapes_as_another_error(tmp_path):
    base = gguf([text("general.name", "fuzz"), array("llama.attention.head_count_kv", U32, 2, struct.pack("<2I", 2, 1)),
                 array("tokenizer.ggml.tokens", STRING, 3, s("a") + s("bb") + s("ccc")),
                 kv("llama.rope.freq_base", F32, struct.pack("<f", 1e4)), kv("x.flag", BOOL, b"\1")],
                tensors=[tensor("token_embd.weight", (32, 4)), tensor("blk.0.attn_q.weight", (32,), offset=512),
                         tensor("output.weight", (32, 2), offset=640)], data=b"\0" * 1024)
    rng = random.Random(1234)
    outcomes = {"ok": 0, "refused": 0}
    for _ in range(1500):
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data))
            if rng.random() < 0.5:
                data[at] = rng.randrange(256)
            else:  # a field overwritten with a large or small count
                data[at:at + 8] = struct.pack("<Q", rng.choice([0, 1, 255, 1 << 20, 1 << 31, 1 << 40, (1 << 64) - 1]))
        if rng.random() < 0.2:
            data = data[:rng.randrange(len(data))]
        for attempt in ("local", "remote"):
            try:
                if attempt == "local":
                    inspect_model(write(tmp_path, "fuzz.gguf", bytes(data)))
                else:
                    inspect_bytes(bytes(data), "fuzz.gguf", file_size=len(data))
                outcomes["ok"] += 1
            except ModelFileError:
                outcomes["refused"] += 1
    assert outcomes["refused"] > 100 and outcomes["ok"] > 10
