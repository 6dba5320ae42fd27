"""The desktop window: pywebview showing the local server's page.

Optional at run time: when pywebview or a GUI backend is missing, or there is no display, the
caller falls back to the browser.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

WINDOW_TITLE = "Tandem"


def display_available() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(
        os.environ.get("DISPLAY")
        or os.environ.get("WAYLAND_DISPLAY")
        or os.environ.get("QT_QPA_PLATFORM") == "offscreen"
    )


class DesktopUnavailable(Exception):
    pass


def open_window(url: str, on_start: Callable[[object], None] | None = None) -> None:
    """Show the window and block until it is closed. on_start(window) runs in its own thread.

    Raises DesktopUnavailable (with the reason) when no window can be shown.
    """
    try:
        import webview
    except Exception as err:  # pywebview or its Qt backend not installed
        raise DesktopUnavailable(f"pywebview is not available ({err})") from err
    gui = os.environ.get("PYWEBVIEW_GUI") or ("qt" if sys.platform.startswith("linux") else None)
    try:
        window = webview.create_window(WINDOW_TITLE, url, width=1100, height=760, min_size=(520, 420))
        args = (on_start, (window,)) if on_start is not None else ()
        webview.start(*args, gui=gui, private_mode=True)
    except Exception as err:
        raise DesktopUnavailable(f"the desktop window could not open ({err})") from err
