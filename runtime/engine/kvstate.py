"""Saved KV caches of conversations, so that returning to one does not re-evaluate its history.

One file per conversation under a directory, written atomically (temporary file, then rename):

    MAGIC | u32 header length | header (JSON) | tokens (int32 each) | llama.cpp sequence state

The header names the binding (a hash of the model file and of every load parameter that shapes
the cache), the token count, the state's length and its SHA-256. A file whose binding differs, or
that is truncated or corrupted, is discarded: the caller re-evaluates, never uses a wrong cache.
The directory is kept under a size cap by removing the least recently used files.

Each write goes to a temporary file of its own (named with the writing process's id, so that a
temporary file left by a crash is recognised and removed at the next start), is renamed into place
and the directory synced. A discard wins over a save running at the same moment: the save does
not rename its file into place once the key was discarded after it began. A state is read
straight into the buffer llama.cpp reads from, so restoring costs about the state's size in RAM.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import struct
import threading
import uuid
from array import array
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("tandem")

MAGIC = b"TANDEMKV2\n"  # 2: the checksum covers the tokens too
SUFFIX = ".kvstate"
TMP_SUFFIX = ".tmp"
MAX_HEADER = 1 << 16
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
    data: object  # a ctypes byte array (what llama.cpp reads), or bytes


_RUN = uuid.uuid4().hex[:8]  # names this process's temporary files apart from a crashed one's


def _digest(token_bytes: bytes, state) -> str:
    """SHA-256 over the tokens and the state: a changed token id would reuse a wrong cache."""
    h = hashlib.sha256(token_bytes)
    h.update(state)
    return h.hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but is not ours (or cannot tell): leave its file alone
    return True


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (POSIX; Windows has no directory handles to sync)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class KVStateStore:
    """Saved states under `directory`, valid for one binding, at most `cap_bytes` in all."""

    def __init__(self, directory: Path | str, binding: str, cap_bytes: int):
        self.directory = Path(directory)
        self.binding = binding
        self.cap_bytes = cap_bytes
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._epochs: dict[str, int] = {}  # a discard bumps the key's epoch: saves begun before it lose
        self.removed_temps = self._clean_temps()

    def _clean_temps(self) -> int:
        """Remove temporary files of writes that never finished (their process is gone)."""
        removed = 0
        for p in self.directory.glob("*" + TMP_SUFFIX):
            parts = p.name.split(".")
            pid = int(parts[-3]) if len(parts) >= 4 and parts[-3].isdigit() else None
            # this process's own pid on a file it did not write: a crashed process had the same pid
            # (pid 1 in a container), so it is a leftover too
            ours = pid == os.getpid() and parts[-2].startswith(_RUN)
            if pid is None or (pid == os.getpid() and not ours) or (pid != os.getpid() and not _pid_alive(pid)):
                p.unlink(missing_ok=True)
                removed += 1
        return removed

    def path_for(self, key: str) -> Path:
        return state_path(self.directory, key)

    def epoch(self, key: str) -> int:
        """Take before reading the state to save: a discard after this point wins over that save."""
        with self._lock:
            return self._epochs.get(key, 0)

    def save(self, key: str, tokens: list[int], data, epoch: int | None = None) -> Path | None:
        """Write the state of `key` (bytes-like); None when it alone is over the cap or the key was
        discarded since `epoch` (default: since this call began); nothing is left behind then."""
        if epoch is None:
            epoch = self.epoch(key)
        view = memoryview(data).cast("B")
        token_bytes = array("i", tokens).tobytes()
        header = json.dumps({
            "binding": self.binding, "n_tokens": len(tokens), "state_bytes": len(view),
            "sha256": _digest(token_bytes, view),
        }).encode()
        size = len(MAGIC) + 4 + len(header) + len(token_bytes) + len(view)
        if size > self.cap_bytes:
            self.discard(key)
            return None
        path = self.path_for(key)
        tmp = self.directory / f".{path.stem}.{os.getpid()}.{_RUN}{uuid.uuid4().hex[:4]}{TMP_SUFFIX}"
        try:
            with open(tmp, "wb") as f:
                f.write(MAGIC)
                f.write(struct.pack("<I", len(header)))
                f.write(header)
                f.write(token_bytes)
                f.write(view)
                f.flush()
                os.fsync(f.fileno())
            with self._lock:
                if self._epochs.get(key, 0) != epoch:  # discarded meanwhile: the discard wins
                    tmp.unlink(missing_ok=True)
                    return None
                os.replace(tmp, path)
            _fsync_dir(self.directory)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._enforce_cap(keep=path)
        return path

    def load(self, key: str) -> SavedState | None:
        """The saved state of `key`, or None: missing, made for another model or plan, or damaged
        (the last two are deleted, with the reason logged)."""
        path = self.path_for(key)
        try:
            with open(path, "rb") as f:
                problem, state = _read(f, os.fstat(f.fileno()).st_size, self.binding)
        except FileNotFoundError:
            return None
        if problem:
            log.warning("discarding saved context %s: %s", path.name, problem)
            path.unlink(missing_ok=True)
            return None
        try:
            os.utime(path)  # recently used
        except FileNotFoundError:
            pass
        return state

    def discard(self, key: str) -> None:
        with self._lock:
            self._epochs[key] = self._epochs.get(key, 0) + 1
            self.path_for(key).unlink(missing_ok=True)

    def total_bytes(self) -> int:
        """Saved states and temporary files alike: both take the disk the cap is about."""
        return sum(size for _, size, _ in self._files())

    def _files(self) -> list[tuple[Path, int, int]]:
        out = []
        for p in [*self.directory.glob("*" + SUFFIX), *self.directory.glob("*" + TMP_SUFFIX)]:
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            out.append((p, st.st_size, st.st_mtime_ns))
        return out

    def _enforce_cap(self, keep: Path) -> None:
        files = sorted(self._files(), key=lambda f: f[2])
        total = sum(size for _, size, _ in files)
        for p, size, _ in files:  # oldest use first
            if total <= self.cap_bytes:
                break
            if p != keep and p.suffix == SUFFIX:
                total -= size
                p.unlink(missing_ok=True)


def _read(f, file_size: int, binding: str) -> tuple[str | None, SavedState | None]:
    """Check and read a state file; the state goes straight into a ctypes buffer."""
    if f.read(len(MAGIC)) != MAGIC:
        return "not a saved context (wrong magic)", None
    raw = f.read(4)
    if len(raw) < 4:
        return "truncated header", None
    (n,) = struct.unpack("<I", raw)
    if n > MAX_HEADER:
        return "unreadable header", None
    try:
        header = json.loads(f.read(n))
        n_tokens, n_state = int(header["n_tokens"]), int(header["state_bytes"])
    except (ValueError, KeyError, TypeError):
        return "unreadable header", None
    if header.get("binding") != binding:
        return "saved for another model file or plan", None
    at = len(MAGIC) + 4 + n
    if n_tokens < 0 or n_state < 0 or file_size != at + 4 * n_tokens + n_state:
        return f"{file_size} bytes where the header promises {at + 4 * max(n_tokens, 0) + max(n_state, 0)} (truncated?)", None
    token_bytes = f.read(4 * n_tokens)
    tokens = array("i")
    tokens.frombytes(token_bytes)
    data = (ctypes.c_uint8 * n_state)()
    if f.readinto(data) != n_state:
        return "truncated state", None
    if _digest(token_bytes, memoryview(data).cast("B")) != header.get("sha256"):
        return "checksum mismatch (corrupted)", None
    return None, SavedState(tokens.tolist(), data)
