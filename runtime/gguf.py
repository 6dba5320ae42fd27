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

from tandem.runtime.errors import InvalidModelFile, ModelFileError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_COUNT = 1 << 24  # tensors, metadata keys or array items beyond this are a hostile file
MAX_DIMS = 4
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
    def __init__(self, f: BinaryIO, source: str):
        self.f, self.source, self.pos = f, source, 0
        self.size = f.seek(0, io.SEEK_END)
        f.seek(0)

    def skip(self, n: int) -> None:
        if self.pos + n > self.size:
            raise HeaderIncomplete(self.source, self.size, self.pos + n)
        self.f.seek(n, io.SEEK_CUR)
        self.pos += n

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) < n:
            raise HeaderIncomplete(self.source, self.pos + len(data), self.pos + n)
        self.pos += n
        return data

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.count("string length", limit=1 << 26)
        return self.read(n).decode("utf-8", errors="replace")

    def count(self, what: str, limit: int = MAX_COUNT) -> int:
        n = self.unpack("<Q")
        if n > limit:
            raise InvalidModelFile(f"{self.source}: {what} of {n} is not plausible; the file is damaged.")
        return n

    def value(self, vtype: int):
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype == GGUFValueType.ARRAY:
            item_type = self.unpack("<I")
            n = self.count("array length")
            if item_type == GGUFValueType.STRING:
                for _ in range(n):
                    self.skip(self.count("string length", limit=1 << 26))
                return StringArray(n)
            if item_type not in _SCALARS:
                raise InvalidModelFile(f"{self.source}: unknown metadata array type {item_type}.")
            fmt = _SCALARS[item_type]
            size = struct.calcsize(fmt)
            raw = self.read(n * size)
            return tuple(x[0] for x in struct.iter_unpack(fmt, raw))
        if vtype not in _SCALARS:
            raise InvalidModelFile(f"{self.source}: unknown metadata value type {vtype}.")
        return self.unpack(_SCALARS[vtype])


def read_header(f: BinaryIO, source: str, file_size: int | None = None, part: int = 0) -> GGUFHeader:
    """Parse a GGUF header from a stream positioned at byte 0.

    With file_size, every tensor must lie inside the file (a truncated download is caught here).
    """
    r = _Reader(f, source)
    magic = r.read(4)
    if magic != GGUF_MAGIC:
        raise InvalidModelFile(f"{source} is not a GGUF file (it starts with {magic!r}). Tandem runs .gguf files.")
    version = r.unpack("<I")
    if version not in SUPPORTED_VERSIONS:
        raise InvalidModelFile(
            f"{source} uses GGUF version {version}; Tandem reads versions 2 and 3. Update Tandem or pick another file."
        )
    n_tensors = r.count("tensor count")
    n_kv = r.count("metadata count")
    metadata: dict = {}
    for _ in range(n_kv):
        key = r.string()
        metadata[key] = r.value(r.unpack("<I"))
    raw_tensors = []
    seen: set[str] = set()
    for _ in range(n_tensors):
        name = r.string()
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
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise InvalidModelFile(f"{source}: alignment {alignment!r} is not a power of two.")
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
