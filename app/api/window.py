"""The desktop window of this process, as far as another `tandem` start needs it: bring it forward.

A second `tandem` finds the running one through the lock file and asks it here to show its
window, instead of starting a second server on the same data.
"""

from __future__ import annotations

import threading
from typing import Callable

from fastapi import APIRouter, Request

from tandem.app.errors import TandemError
from tandem.app.security import is_loopback

router = APIRouter(prefix="/api/app", tags=["app"])

# pywebview runs one GUI loop per process, so a process has at most one window to bring forward.
_lock = threading.Lock()
_focus: Callable[[], None] | None = None


class NotLocal(TandemError):
    status = 403
    code = "forbidden"


class NoWindow(TandemError):
    status = 409
    code = "no_window"


def set_focus_handler(focus: Callable[[], None] | None) -> None:
    """focus() brings the window forward; None while no window is open."""
    global _focus
    with _lock:
        _focus = focus


@router.post("/focus")
def focus(request: Request) -> dict:
    # Even when serving the LAN (--host 0.0.0.0), only this machine may raise the window.
    if not is_loopback(request.client.host if request.client else ""):
        raise NotLocal("Only a program on this machine can bring Tandem's window forward.")
    with _lock:
        handler = _focus
    if handler is None:
        raise NoWindow("This Tandem runs without a window (tandem serve); open its address in a browser.")
    handler()
    return {"focused": True}
