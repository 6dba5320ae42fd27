"""Saved KV caches of conversations, so that returning to one does not re-evaluate its history.

One file per conversation under a directory, written atomically (temporary file, then rename):

    MAGIC | u32 header length | header (JSON) | tokens (int32 each) | llama.cpp sequence state

The header names the binding (a hash of the model file and of every load parameter that shapes
the cache), the token count, the state's length and its SHA-256. A file whose binding differs, or
that is truncated or corrupted, is discarded: the caller re-evaluates, never uses a wrong cache.
The directory is kept under a size cap by removing the least recently used files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from array import array
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("tandem")

MAGIC = b"TANDEMKV1\n"
SUFFIX = ".kvstate"
KV_SHAPING_PARAMS = ("n_ctx", "n_gpu_layers", "n_ubatch", "flash_attn", "type_k", "type_v",
                     "offload_kqv", "swa_full", "main_gpu", "tensor_split")


def binding_for(params) -> str:
    """A hash of the model file (path, size, modification time) and the load parameters that
    decide what a saved cache means. Any change makes earlier saved states unusable."""
    path = Path(params.path).resolve()
    st = path.stat()
    parts = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
             **{k: getattr(params, k) for k in KV_SHAPING_PARAMS}}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def state_path(directory: Path, key: str) -> Path:
    """Where the saved cache of conversation `key` lives (the key is hashed: any string is safe)."""
    return Path(directory) / (hashlib.sha256(key.encode()).hexdigest()[:32] + SUFFIX)


@dataclass(frozen=True)
class SavedState:
    tokens: list[int]
    data: bytes


class KVStateStore:
    """Saved states under `directory`, valid for one binding, at most `cap_bytes` in all."""

    def __init__(self, directory: Path | str, binding: str, cap_bytes: int):
        self.directory = Path(directory)
        self.binding = binding
        self.cap_bytes = cap_bytes
        self.directory.mkdir(parents=True, exist_ok=True)

    def path_for(self, key: str) -> Path:
        return state_path(self.directory, key)

    def save(self, key: str, tokens: list[int], data: bytes) -> Path | None:
        """Write the state of `key`; None when it alone is over the cap (nothing is written)."""
        header = json.dumps({
            "binding": self.binding, "n_tokens": len(tokens), "state_bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }).encode()
        size = len(MAGIC) + 4 + len(header) + 4 * len(tokens) + len(data)
        if size > self.cap_bytes:
            self.discard(key)
            return None
        path = self.path_for(key)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(MAGIC)
            f.write(struct.pack("<I", len(header)))
            f.write(header)
            f.write(array("i", tokens).tobytes())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self._enforce_cap(keep=path)
        return path

    def load(self, key: str) -> SavedState | None:
        """The saved state of `key`, or None: missing, made for another model or plan, or damaged
        (the last two are deleted, with the reason logged)."""
        path = self.path_for(key)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        problem, state = _parse(raw, self.binding)
        if problem:
            log.warning("discarding saved context %s: %s", path.name, problem)
            path.unlink(missing_ok=True)
            return None
        os.utime(path)  # recently used
        return state

    def discard(self, key: str) -> None:
        self.path_for(key).unlink(missing_ok=True)

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.directory.glob("*" + SUFFIX))

    def _enforce_cap(self, keep: Path) -> None:
        files = sorted(self.directory.glob("*" + SUFFIX), key=lambda p: p.stat().st_mtime_ns)
        total = sum(p.stat().st_size for p in files)
        for p in files:  # oldest use first
            if total <= self.cap_bytes:
                break
            if p != keep:
                total -= p.stat().st_size
                p.unlink(missing_ok=True)


def _parse(raw: bytes, binding: str) -> tuple[str | None, SavedState | None]:
    if not raw.startswith(MAGIC):
        return "not a saved context (wrong magic)", None
    at = len(MAGIC)
    if len(raw) < at + 4:
        return "truncated header", None
    (n,) = struct.unpack_from("<I", raw, at)
    at += 4
    try:
        header = json.loads(raw[at : at + n])
        n_tokens, n_state = int(header["n_tokens"]), int(header["state_bytes"])
    except (ValueError, KeyError, TypeError):
        return "unreadable header", None
    if header.get("binding") != binding:
        return "saved for another model file or plan", None
    at += n
    if len(raw) != at + 4 * n_tokens + n_state:
        return f"{len(raw)} bytes where the header promises {at + 4 * n_tokens + n_state} (truncated?)", None
    tokens = array("i")
    tokens.frombytes(raw[at : at + 4 * n_tokens])
    data = raw[at + 4 * n_tokens :]
    if hashlib.sha256(data).hexdigest() != header.get("sha256"):
        return "checksum mismatch (corrupted)", None
    return None, SavedState(tokens.tolist(), data)
