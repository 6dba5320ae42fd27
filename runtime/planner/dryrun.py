"""Ask llama.cpp itself what a plan allocates, without allocating (no_alloc + load mode none).

About 0.1 s. llama.cpp prints the KV cache size and the compute buffer of every device exactly;
per-device model and KV buffers print as 0.00 in this mode, so the per-device split of weights and
KV comes from the analytic model (runtime-facts: verified within 3 MiB against real VRAM).
"""

from __future__ import annotations

import ctypes
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

MIB = 1 << 20
_KV_RE = re.compile(r"llama_kv_cache: size =\s*([\d.]+) MiB")
_COMPUTE_RE = re.compile(r"(\S+) compute buffer size =\s*([\d.]+) MiB")
_OUTPUT_RE = re.compile(r"(\S+)\s+output buffer size =\s*([\d.]+) MiB")
_lock = threading.Lock()  # llama.cpp's log callback is process-wide


@dataclass(frozen=True)
class DryRun:
    ok: bool
    kv_bytes: int = 0
    compute_bytes: dict = field(default_factory=dict)  # device name (CPU, CUDA0 ...) -> bytes
    output_bytes: int = 0
    seconds: float = 0.0
    error: str | None = None


def parse_log(text: str) -> dict:
    """KV total, compute buffers per device and the host output buffer from llama.cpp's log."""
    compute: dict[str, int] = {}
    for dev, mib in _COMPUTE_RE.findall(text):
        compute[dev] = compute.get(dev, 0) + round(float(mib) * MIB)
    return {
        "kv_bytes": sum(round(float(m) * MIB) for m in _KV_RE.findall(text)),
        "compute_bytes": compute,
        "output_bytes": sum(round(float(m) * MIB) for _, m in _OUTPUT_RE.findall(text)),
    }


class LogCapture:
    """Collect llama.cpp's log while a model loads (process-wide: one capture at a time)."""

    def __enter__(self) -> "LogCapture":
        import llama_cpp

        self.lines: list[str] = []
        _lock.acquire()

        @llama_cpp.llama_log_callback
        def collect(level, text, user_data):
            self.lines.append(text.decode("utf-8", errors="replace"))

        self._callback = collect  # keep a reference: llama.cpp calls it from C
        llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
        return self

    def __exit__(self, *exc) -> None:
        import llama_cpp

        _restore_default_logging(llama_cpp)
        _lock.release()

    def report(self) -> dict:
        return parse_log("".join(self.lines))


def dry_run(path: Path, *, n_ctx: int, n_gpu_layers: int, n_ubatch: int, n_batch: int, type_k: int,
            type_v: int, flash_attn: bool, offload_kqv: bool, swa_full: bool = True) -> DryRun:
    import llama_cpp

    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level, text, user_data):
        lines.append(text.decode("utf-8", errors="replace"))

    t0 = time.perf_counter()
    with _lock:
        llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
        model = ctx = None
        try:
            mp = llama_cpp.llama_model_default_params()
            mp.no_alloc = True
            mp.load_mode = 0  # LLAMA_LOAD_MODE_NONE: without it no_alloc aborts
            mp.n_gpu_layers = n_gpu_layers
            model = llama_cpp.llama_model_load_from_file(str(path).encode(), mp)
            if not model:
                return DryRun(ok=False, error=_tail(lines), seconds=time.perf_counter() - t0)
            cp = llama_cpp.llama_context_default_params()
            cp.n_ctx, cp.n_batch, cp.n_ubatch = n_ctx, n_batch, n_ubatch
            cp.type_k, cp.type_v = type_k, type_v
            cp.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
            cp.offload_kqv = offload_kqv
            cp.swa_full = swa_full
            ctx = llama_cpp.llama_init_from_model(model, cp)
            if not ctx:
                return DryRun(ok=False, error=_tail(lines), seconds=time.perf_counter() - t0)
        finally:
            if ctx:
                llama_cpp.llama_free(ctx)
            if model:
                llama_cpp.llama_model_free(model)
            _restore_default_logging(llama_cpp)
    return DryRun(ok=True, seconds=time.perf_counter() - t0, **parse_log("".join(lines)))


def _tail(lines: list[str]) -> str:
    text = "".join(lines).strip().splitlines()
    errors = [ln for ln in text if "error" in ln.lower() or "failed" in ln.lower()]
    return " / ".join((errors or text)[-3:])


def _restore_default_logging(llama_cpp) -> None:
    from tandem.runtime import llama_log

    llama_log.install()
