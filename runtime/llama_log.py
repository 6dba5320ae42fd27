"""llama.cpp's log, forwarded to Python's logging at its true levels.

llama-cpp-python's own callback maps ggml's levels as they were numbered long ago, so every
warning of today's llama.cpp prints as an error on the terminal (for example the note llama.cpp
writes when a stopped reply interrupts its evaluation). Here: DEBUG 1, INFO 2, WARN 3, ERROR 4,
CONT 5 (continues the previous line), to the "llama.cpp" logger, which shows only errors unless
someone asks for more.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("llama.cpp")
log.setLevel(logging.ERROR)
LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
# What llama.cpp writes when the abort switch stops an evaluation (a person pressed Stop): expected,
# so not shown as errors.
STOPPED = ("compute status: 1", "compute_async failed with error 1", "failed to decode, ret = 2",
           "removing memory module entries")
_last = [logging.DEBUG]
_callback = None


def _forward(level: int, text: bytes, _user_data) -> None:
    python_level = _last[0] if level == 5 else LEVELS.get(level, logging.DEBUG)
    line = text.decode("utf-8", "replace").rstrip("\n")
    if any(s in line for s in STOPPED):
        python_level = logging.DEBUG
    _last[0] = python_level
    if log.isEnabledFor(python_level):
        log.log(python_level, "%s", line)


def install() -> None:
    """Route llama.cpp's log here (idempotent; also after a temporary capture ends)."""
    global _callback
    import llama_cpp

    if _callback is None:
        _callback = llama_cpp.llama_log_callback(_forward)
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
