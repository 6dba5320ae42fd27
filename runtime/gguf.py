"""GGUF model files: the checks that run before llama.cpp ever opens a file."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from runtime.errors import ModelFileError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
HEADER_SIZE = 24  # magic, version (u32), tensor count (u64), metadata count (u64)


def check_model_file(path: str | os.PathLike) -> Path:
    """Return the resolved path of a readable GGUF file, or raise ModelFileError saying why not."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelFileError(f"Model file not found: {p}. Check the path, or download the model again.")
    if not p.is_file():
        raise ModelFileError(f"Model path is not a file: {p}. Point to the .gguf file itself.")
    try:
        with p.open("rb") as f:
            header = f.read(HEADER_SIZE)
    except OSError as err:
        raise ModelFileError(
            f"Model file cannot be read: {p} ({err.strerror}). Check its permissions."
        ) from err
    if len(header) < HEADER_SIZE:
        raise ModelFileError(
            f"Model file is truncated: {p} holds {len(header)} bytes. Download it again."
        )
    if header[:4] != GGUF_MAGIC:
        raise ModelFileError(
            f"Not a GGUF model file: {p} (it starts with {header[:4]!r}). "
            "Tandem runs GGUF files; pick a .gguf download."
        )
    (version,) = struct.unpack_from("<I", header, 4)
    if version not in SUPPORTED_VERSIONS:
        raise ModelFileError(
            f"Unsupported GGUF version {version} in {p}; this Tandem reads versions "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))}. Update Tandem or pick another file."
        )
    return p.resolve()
