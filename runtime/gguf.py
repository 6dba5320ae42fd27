"""GGUF model files: read the header and tensor table (never the weights), validate, describe.

Works on a local file, on split files (`name-00001-of-00003.gguf`) and on the first bytes of a
remote file (an HTTP Range fetch): a prefix that ends inside the header raises HeaderIncomplete
saying how far it got, so the caller can fetch more.
"""

from __future__ import annotations

import io
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from gguf.constants import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType

from tandem.runtime.errors import InvalidModelFile, ModelFileError, RuntimeFailure

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
# Every count in a header is checked twice before anything is allocated for it: against a cap no
# real model comes near, and against the bytes left in the file (each item takes at least a
# known number of bytes, so a count that cannot fit is a damaged or hostile file).
MAX_TENSORS = 1 << 18  # the largest real models have a few thousand
MAX_KV = 1 << 16  # real files carry a few dozen keys
MAX_ARRAY = 1 << 22  # the largest vocabularies (and merge lists) are well under a million
MAX_KEY_BYTES = 65535  # the GGUF spec's limit for a key
MAX_NAME_BYTES = 1024  # llama.cpp itself refuses tensor names of 64 bytes or more
MAX_STRING_BYTES = 1 << 26
MAX_KEPT_STRING = 1 << 20  # longer strings (an embedded tokenizer.json) are skipped, not read
MAX_KEPT_ARRAY = 1 << 13  # longer numeric arrays (scores, token types) are skipped, not read
MAX_DIMS = 4
MAX_ALIGNMENT = 1 << 20
MAX_ELEMENTS = (1 << 63) - 1  # ggml counts elements in an int64
# Minimum bytes of one entry of each table, for the "does it fit in the file" check.
MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, a one-byte value
MIN_TENSOR_BYTES = 8 + 4 + 8 + 4 + 8  # name length, n_dims, one dimension, type, offset
MIN_STRING_BYTES = 8  # the length of an empty string

# The model's own hyperparameters, bounded before anything sizes per-layer tables from them:
# (key under the architecture, largest plausible value). A per-layer value may be an array.
MAX_LAYERS = 4096  # the deepest real models have under 200 layers
HPARAM_LIMITS = {
    "block_count": MAX_LAYERS,
    "embedding_length": 1 << 20,
    "feed_forward_length": 1 << 24,
    "attention.head_count": 1 << 16,
    "attention.head_count_kv": 1 << 16,
    "attention.key_length": 1 << 16,
    "attention.value_length": 1 << 16,
    "attention.sliding_window": 1 << 32,
    "context_length": 1 << 32,
    "rope.dimension_count": 1 << 16,
    "expert_count": 1 << 16,
    "expert_used_count": 1 << 16,
    "vocab_size": 1 << 24,
}
PER_LAYER = {"feed_forward_length", "attention.head_count", "attention.head_count_kv"}
SPLIT_RE = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)

_SCALARS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h", GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?", GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}


class HeaderIncomplete(InvalidModelFile):
    """The bytes end inside the header: fetch at least `need` bytes and try again."""

    def __init__(self, source: str, have: int, need: int):
        self.have, self.need = have, need
        super().__init__(f"{source}: the header continues past byte {have}; read at least {need} bytes.")


@dataclass(frozen=True)
class StringArray:
    """A string array kept as its length only (token lists, merges): the text is not needed."""

    count: int


@dataclass(frozen=True)
class SkippedArray:
    """A long numeric array (token scores, token types) kept as its length only."""

    count: int


@dataclass(frozen=True)
class LongString:
    """A string value too long to be worth reading (an embedded tokenizer.json), as its length."""

    length: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: str
    shape: tuple[int, ...]
    n_bytes: int
    offset: int  # absolute offset of the data in its file
    part: int = 0  # index of the split file holding it

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    metadata: dict
    tensors: tuple[TensorInfo, ...]
    data_offset: int  # where tensor data starts
    data_end: int  # one past the last tensor byte


class _Reader:
    """file_size: the size of the whole file when known (a remote prefix may be shorter): counts
    are checked against what is left of it."""

    def __init__(self, f: BinaryIO, source: str, file_size: int | None):
        self.f, self.source, self.pos = f, source, 0
        self.size = f.seek(0, io.SEEK_END)
        self.total = file_size
        f.seek(0)

    def _need(self, n: int) -> None:
        """Before reading or skipping n bytes: past the end of the whole file the file is damaged;
        past the end of the bytes at hand (a remote prefix) the caller should fetch more."""
        if self.total is not None and self.pos + n > self.total:
            raise InvalidModelFile(
                f"{self.source} is truncated inside its header: it needs byte {self.pos + n:,} but has "
                f"{self.total:,}. The file is damaged or incomplete; download it again."
            )
        if self.pos + n > self.size:
            raise HeaderIncomplete(self.source, self.size, self.pos + n)

    def skip(self, n: int) -> None:
        self._need(n)
        self.f.seek(n, io.SEEK_CUR)
        self.pos += n

    def read(self, n: int) -> bytes:
        self._need(n)
        data = self.f.read(n)
        if len(data) < n:
            raise HeaderIncomplete(self.source, self.pos + len(data), self.pos + n)
        self.pos += n
        return data

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self, what: str = "string length", limit: int = MAX_STRING_BYTES, keep: int | None = None):
        """The text; a string longer than `keep` is skipped and returned as a LongString."""
        n = self.count(what, limit=limit, each=1)
        if keep is not None and n > keep:
            self.skip(n)
            return LongString(n)
        return self.read(n).decode("utf-8", errors="replace")

    def count(self, what: str, limit: int, each: int) -> int:
        """A count of items taking at least `each` bytes apiece, checked before anything is
        allocated for it."""
        n = self.unpack("<Q")
        if n > limit:
            raise InvalidModelFile(
                f"{self.source}: {what} of {n:,} is not plausible (the limit is {limit:,}); the file is damaged."
            )
        if self.total is not None and n * each > self.total - self.pos:
            raise InvalidModelFile(
                f"{self.source} is truncated inside its header or damaged: {what} of {n:,} cannot fit in "
                f"the {self.total - self.pos:,} bytes left in the file. Download it again."
            )
        return n

    def value(self, vtype: int):
        if vtype == GGUFValueType.STRING:
            return self.string(keep=MAX_KEPT_STRING)
        if vtype == GGUFValueType.ARRAY:
            item_type = self.unpack("<I")
            if item_type == GGUFValueType.STRING:
                n = self.count("array length", MAX_ARRAY, MIN_STRING_BYTES)
                for _ in range(n):
                    self.skip(self.count("string length", MAX_STRING_BYTES, 1))
                return StringArray(n)
            if item_type not in _SCALARS:
                raise InvalidModelFile(f"{self.source}: unknown metadata array type {item_type}.")
            fmt = _SCALARS[item_type]
            size = struct.calcsize(fmt)
            n = self.count("array length", MAX_ARRAY, size)
            if n > MAX_KEPT_ARRAY:
                self.skip(n * size)
                return SkippedArray(n)
            raw = self.read(n * size)
            return tuple(x[0] for x in struct.iter_unpack(fmt, raw))
        if vtype not in _SCALARS:
            raise InvalidModelFile(f"{self.source}: unknown metadata value type {vtype}.")
        return self.unpack(_SCALARS[vtype])


def hparam(metadata: dict, key: str, source: str, default=None):
    """The architecture's hyperparameter `key` (e.g. "block_count") as an int, or a tuple of ints
    for a per-layer value, checked against HPARAM_LIMITS; InvalidModelFile when it is not one."""
    arch = metadata.get("general.architecture")
    value = metadata.get(f"{arch}.{key}", default)
    if value is None:
        return None
    limit = HPARAM_LIMITS.get(key, 1 << 32)

    def one(v):
        # bools and integral floats are what a lenient converter may write; anything else is not a size
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if not isinstance(v, int) or not 0 <= v <= limit:
            raise InvalidModelFile(
                f"{source}: {arch}.{key} is {_show(v)}, not a size from 0 to {limit:,}; the file is damaged."
            )
        return int(v)

    if isinstance(value, (tuple, SkippedArray)):
        if key not in PER_LAYER:
            raise InvalidModelFile(f"{source}: {arch}.{key} is an array, not one number; the file is damaged.")
        if isinstance(value, SkippedArray) or len(value) > MAX_LAYERS:
            n = value.count if isinstance(value, SkippedArray) else len(value)
            raise InvalidModelFile(
                f"{source}: {arch}.{key} has {n:,} per-layer values, more than the {MAX_LAYERS:,} layers "
                "a model may have; the file is damaged."
            )
        return tuple(one(v) for v in value)
    return one(value)


def _show(v) -> str:
    text = repr(v) if not isinstance(v, (StringArray, SkippedArray, LongString)) else type(v).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def check_hparams(metadata: dict, source: str) -> None:
    """The architecture name and its size hyperparameters are sane (before any per-layer table is
    sized from them). A file without general.architecture (a later part of a split model) passes."""
    arch = metadata.get("general.architecture")
    if arch is None:
        return
    if not isinstance(arch, str) or not 0 < len(arch) <= 64:
        raise InvalidModelFile(f"{source}: general.architecture is {_show(arch)}, not an architecture name.")
    for key in HPARAM_LIMITS:
        hparam(metadata, key, source)


def read_header(f: BinaryIO, source: str, file_size: int | None = None, part: int = 0) -> GGUFHeader:
    """Parse a GGUF header from a stream positioned at byte 0.

    With file_size, every tensor must lie inside the file (a truncated download is caught here),
    and every count must fit in it. Any failure is an InvalidModelFile (HeaderIncomplete when the
    bytes at hand end inside the header), never a parser's own error.
    """
    try:
        return _read_header(f, source, file_size, part)
    except RuntimeFailure:
        raise
    except OSError as err:
        raise ModelFileError(f"{source} cannot be read ({err.strerror or err}). Check the disk and the file.") from err
    except (MemoryError, RecursionError, ArithmeticError, ValueError, TypeError, LookupError, struct.error) as err:
        raise InvalidModelFile(
            f"{source}: the header cannot be read ({type(err).__name__}: {err}); the file is damaged."
        ) from None


def _read_header(f: BinaryIO, source: str, file_size: int | None, part: int) -> GGUFHeader:
    r = _Reader(f, source, file_size)
    magic = r.read(4)
    if magic != GGUF_MAGIC:
        raise InvalidModelFile(f"{source} is not a GGUF file (it starts with {magic!r}). Tandem runs .gguf files.")
    version = r.unpack("<I")
    if version not in SUPPORTED_VERSIONS:
        raise InvalidModelFile(
            f"{source} uses GGUF version {version}; Tandem reads versions 2 and 3. Update Tandem or pick another file."
        )
    n_tensors = r.count("tensor count", MAX_TENSORS, MIN_TENSOR_BYTES)
    n_kv = r.count("metadata count", MAX_KV, MIN_KV_BYTES)
    if r.total is not None and n_tensors * MIN_TENSOR_BYTES + n_kv * MIN_KV_BYTES > r.total - r.pos:
        raise InvalidModelFile(
            f"{source} is truncated inside its header or damaged: {n_tensors:,} tensors and {n_kv:,} metadata "
            f"keys cannot fit in its {r.total:,} bytes. Download it again."
        )
    metadata: dict = {}
    for _ in range(n_kv):
        key = r.string("metadata key length", MAX_KEY_BYTES)
        if key in metadata:
            raise InvalidModelFile(f"{source} has metadata key {key[:80]!r} twice; the file is damaged.")
        metadata[key] = r.value(r.unpack("<I"))
    check_hparams(metadata, source)
    raw_tensors = []
    seen: set[str] = set()
    for _ in range(n_tensors):
        name = r.string("tensor name length", MAX_NAME_BYTES)
        if name in seen:
            raise InvalidModelFile(f"{source} names tensor {name!r} twice; the file is damaged.")
        seen.add(name)
        n_dims = r.unpack("<I")
        if not 1 <= n_dims <= MAX_DIMS:
            raise InvalidModelFile(f"{source}: tensor {name!r} has {n_dims} dimensions; the file is damaged.")
        shape = tuple(r.unpack("<Q") for _ in range(n_dims))
        ttype = r.unpack("<I")
        offset = r.unpack("<Q")
        raw_tensors.append((name, shape, ttype, offset))
    alignment = metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or not 0 < alignment <= MAX_ALIGNMENT or alignment & (alignment - 1):
        raise InvalidModelFile(f"{source}: alignment {_show(alignment)} is not a power of two up to {MAX_ALIGNMENT:,}.")
    data_offset = -(-r.pos // alignment) * alignment
    tensors = []
    data_end = data_offset
    for name, shape, ttype, offset in raw_tensors:
        try:
            qtype = GGMLQuantizationType(ttype)
            block, type_size = GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise InvalidModelFile(f"{source}: tensor {name!r} has unknown type {ttype}; update Tandem.") from None
        if shape[0] % block:
            raise InvalidModelFile(f"{source}: tensor {name!r} row of {shape[0]} does not fit {qtype.name} blocks.")
        n_elements = 1
        for d in shape:
            n_elements *= d
        if n_elements > MAX_ELEMENTS:
            raise InvalidModelFile(
                f"{source}: tensor {name!r} of shape {shape} is too large for ggml; the file is damaged.")
        n_bytes = n_elements // block * type_size
        start = data_offset + offset
        if offset % alignment:
            raise InvalidModelFile(f"{source}: tensor {name!r} is not aligned; the file is damaged.")
        if file_size is not None and start + n_bytes > file_size:
            raise InvalidModelFile(
                f"{source} is truncated: tensor {name!r} ends at byte {start + n_bytes:,} but the file has "
                f"{file_size:,} bytes. The download is incomplete; download the model again."
            )
        tensors.append(TensorInfo(name, qtype.name, shape, n_bytes, start, part))
        data_end = max(data_end, start + n_bytes)
    return GGUFHeader(version, metadata, tuple(tensors), data_offset, data_end)


def header_from_bytes(data: bytes, source: str = "remote file", file_size: int | None = None) -> GGUFHeader:
    """Parse the first bytes of a file (e.g. from an HTTP Range request)."""
    return read_header(io.BytesIO(data), source, file_size)


def split_parts(path: Path) -> list[Path]:
    """All files of a split model given any of them, in order; [path] for a single file."""
    m = SPLIT_RE.match(path.name)
    if not m:
        return [path]
    count = int(m["count"])
    parts = [path.with_name(f"{m['stem']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
    missing = [p.name for p in parts if not p.exists()]
    if missing:
        raise InvalidModelFile(f"Split model {m['stem']} is missing {', '.join(missing)}; download every part.")
    return parts


def read_model_headers(path: str | os.PathLike) -> list[GGUFHeader]:
    """Headers of a model file (every part of a split model), each checked against its file size."""
    first = check_readable(path)
    headers = []
    names: set[str] = set()
    for i, part in enumerate(split_parts(first)):
        with part.open("rb") as f:
            try:
                header = read_header(f, part.name, part.stat().st_size, part=i)
            except HeaderIncomplete as err:
                raise InvalidModelFile(
                    f"{part.name} is truncated inside its header ({err.have:,} bytes). Download it again."
                ) from None
        dupes = names & {t.name for t in header.tensors}
        if dupes:
            raise InvalidModelFile(f"{part.name} repeats tensor {sorted(dupes)[0]!r} of an earlier part.")
        names |= {t.name for t in header.tensors}
        headers.append(header)
    return headers


def check_readable(path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelFileError(f"Model file not found: {p}. Check the path, or download the model again.")
    if not p.is_file():
        raise ModelFileError(f"Model path is not a file: {p}. Point to the .gguf file itself.")
    try:
        with p.open("rb"):
            pass
    except OSError as err:
        raise ModelFileError(f"Model file cannot be read: {p} ({err.strerror}). Check its permissions.") from err
    return p.resolve()


def check_model_file(path: str | os.PathLike) -> Path:
    """Return the resolved path of a complete, readable GGUF model, or raise saying what is wrong."""
    p = check_readable(path)
    read_model_headers(p)
    return p
