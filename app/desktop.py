"""The desktop window: pywebview showing the local server's page.

Optional at run time: when pywebview or a GUI backend is missing, or there is no display, the
caller falls back to the browser.

Besides showing the page, the window behaves like an application's: it comes forward when
Tandem is started again (see tandem.app.instance and the /api/app/focus route), it closes
cleanly on SIGTERM, SIGINT and SIGHUP, it remembers its size and place, and it asks before
quitting while a download runs.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

WINDOW_TITLE = "Tandem"
DEFAULT_SIZE = (1100, 760)
MIN_SIZE = (520, 420)
# Larger than any screen made; a saved size past it is a corrupt file, not a preference.
MAX_SIDE = 16384
GEOMETRY_FILE = "window.json"
QUIT_TITLE = "Quit Tandem?"
QUIT_MESSAGE = "A download is running. It pauses now and resumes the next time Tandem starts."
SMOKE_PREFIX = "tandem-smoke: "

log = logging.getLogger("tandem")

_ASSETS = Path(__file__).resolve().parent.parent / "assets"


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


# --- size and place, kept between runs


@dataclass
class Geometry:
    width: int
    height: int
    x: int | None = None  # the frame's top-left corner on the virtual desktop; None: centred
    y: int | None = None
    maximized: bool = False

    def to_dict(self) -> dict:
        return {"width": self.width, "height": self.height, "x": self.x, "y": self.y, "maximized": self.maximized}


def load_geometry(data_dir: Path) -> Geometry | None:
    """The saved geometry, or None when there is none or it is not believable."""
    try:
        raw = json.loads((Path(data_dir) / GEOMETRY_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    w, h, x, y = (raw.get(k) for k in ("width", "height", "x", "y"))
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (w, h)):
        return None
    if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and abs(v) <= 4 * MAX_SIDE for v in (x, y)):
        x = y = None
    return Geometry(w, h, x, y, bool(raw.get("maximized", False)))


def save_geometry(data_dir: Path, geometry: Geometry) -> None:
    path = Path(data_dir) / GEOMETRY_FILE
    tmp = path.with_name(f"{GEOMETRY_FILE}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(geometry.to_dict()))
        os.replace(tmp, path)  # a crash mid-write leaves the previous geometry, never half a file
    except OSError as err:
        tmp.unlink(missing_ok=True)
        log.warning("could not save the window's size and place in %s (%s)", path, err)


Screen = tuple[int, int, int, int]  # x, y, width, height; the primary screen first


def fit_geometry(saved: Geometry, screens: list[Screen]) -> Geometry:
    """The saved geometry made safe for today's screens: never larger than the screen it is on,
    never smaller than the window's minimum, and centred when too little of it would be visible
    (a monitor unplugged since, a resolution lowered)."""

    def clamp(v: int, lo: int, hi: int) -> int:
        return max(lo, min(v, max(lo, hi)))

    if not screens:
        return Geometry(clamp(saved.width, MIN_SIZE[0], 4096), clamp(saved.height, MIN_SIZE[1], 4096),
                        maximized=saved.maximized)
    home = screens[0]
    if saved.x is not None and saved.y is not None:
        # The screen holding the window's title bar: the part a person needs to grab to move it.
        grab_x, grab_y = saved.x + min(saved.width, 200) // 2, saved.y + 10
        for s in screens:
            sx, sy, sw, sh = s
            if sx <= grab_x < sx + sw and sy <= grab_y < sy + sh:
                home = s
                break
        else:
            saved = Geometry(saved.width, saved.height, None, None, saved.maximized)
    sx, sy, sw, sh = home
    width, height = clamp(saved.width, MIN_SIZE[0], sw), clamp(saved.height, MIN_SIZE[1], sh)
    if saved.x is None or saved.y is None:
        return Geometry(width, height, None, None, saved.maximized)
    x = clamp(saved.x, sx, sx + sw - width)
    y = clamp(saved.y, sy, sy + sh - min(height, 80))
    return Geometry(width, height, x, y, saved.maximized)


# --- the window


class Shell:
    """One pywebview window on the server's page, with the behaviour around it."""

    def __init__(self, url: str, *, data_dir: Path | None = None,
                 active_downloads: Callable[[], int] | None = None,
                 on_start: Callable[[object], None] | None = None, report_loaded: bool = False):
        """data_dir: where the geometry is kept (None: not kept). active_downloads(): how many
        downloads would pause on quitting (None: never ask). report_loaded: print the window's
        title and the page's once it is ready (the packaged app's smoke test)."""
        self.url = url
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.active_downloads = active_downloads
        self.on_start = on_start
        self.report_loaded = report_loaded
        self.window = None
        self.quitting = False  # a signal asked to quit: close without asking
        self._asking = False
        self._state = "normal"
        self._position: tuple[int, int] | None = None
        self._saved = load_geometry(self.data_dir) if self.data_dir is not None else None
        self._previous_handlers: dict[int, object] = {}

    def run(self) -> None:
        """Show the window and block until it is closed. on_start(window) runs in its own thread.

        Raises DesktopUnavailable (with the reason) when no window can be shown.
        """
        try:
            import webview
        except Exception as err:  # pywebview or its Qt backend not installed
            raise DesktopUnavailable(f"pywebview is not available ({err})") from err
        gui = os.environ.get("PYWEBVIEW_GUI") or ("qt" if sys.platform.startswith("linux") else None)
        size = (self._saved.width, self._saved.height) if self._saved else DEFAULT_SIZE
        try:
            # text_select: pywebview otherwise injects an inline <style> to turn selection off, which
            # the page's Content-Security-Policy (style-src 'self') refuses, and replies are meant to be
            # copied.
            window = webview.create_window(WINDOW_TITLE, self.url, width=size[0], height=size[1],
                                           min_size=MIN_SIZE, text_select=True,
                                           maximized=bool(self._saved and self._saved.maximized))
        except Exception as err:
            raise DesktopUnavailable(f"the desktop window could not open ({err})") from err
        self.window = window
        events = window.events
        events.initialized += self._on_initialized
        events.before_show += self._on_before_show
        events.closing += self._on_closing
        events.moved += self._on_moved
        events.maximized += lambda: self._set_state("maximized")
        events.minimized += lambda: self._set_state("minimized")
        events.restored += lambda: self._set_state("normal")
        if self.report_loaded:
            events.loaded += self._report
        icon = _ASSETS / "icon-256.png"
        self._install_signal_handlers()
        try:
            args = (self.on_start, (window,)) if self.on_start is not None else ()
            webview.start(*args, gui=gui, private_mode=True, icon=str(icon) if icon.is_file() else None)
        except Exception as err:
            raise DesktopUnavailable(f"the desktop window could not open ({err})") from err
        finally:
            self._restore_signal_handlers()

    # --- bringing the window forward (another `tandem` start asks through /api/app/focus)
    def focus(self) -> None:
        window = self.window
        if window is None:
            return
        if self._state == "maximized":
            window.show()
        else:
            window.restore()  # un-minimizes, raises and activates
        # Window managers refuse to let a background program take the focus; staying on top for a
        # moment still puts the window in front of the person.
        window.on_top = True
        timer = threading.Timer(1.0, _drop_on_top, (window,))
        timer.daemon = True
        timer.start()
        print("tandem: Tandem was started again; this window was brought forward.", file=sys.stderr, flush=True)

    # --- quitting on a signal
    def request_quit(self) -> None:
        """Close the window as if the person did, without asking (safe from a signal handler)."""
        self.quitting = True
        if self._asking:
            _answer_dialog_ok()
            return
        threading.Thread(target=self._close_when_shown, name="tandem-quit", daemon=True).start()

    def _close_when_shown(self) -> None:
        window = self.window
        if window is None:
            return
        window.events.shown.wait(60)
        try:
            window.destroy()
        except Exception as err:  # noqa: BLE001 - already gone
            log.debug("closing the window: %s", err)

    def _on_signal(self, signum, frame) -> None:
        # Runs on the main thread, which is the GUI's: between two Qt events, possibly inside a
        # Qt callback. Raising here (KeyboardInterrupt) would escape into Qt and abort the process
        # (status 134), so the window is only asked to close, from another thread.
        try:
            self.request_quit()
        except Exception as err:  # noqa: BLE001 - never into Qt
            log.warning("could not close the window on signal %s: %s", signum, err)

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for name in ("SIGINT", "SIGTERM", "SIGHUP"):
            signum = getattr(signal, name, None)
            if signum is None:
                continue
            try:
                previous = signal.signal(signum, self._on_signal)
            except (OSError, ValueError):
                continue
            self._previous_handlers.setdefault(signum, previous)

    def _restore_signal_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            try:
                signal.signal(signum, handler)
            except (OSError, ValueError, TypeError):
                pass
        self._previous_handlers.clear()

    # --- pywebview events
    def _on_initialized(self, renderer) -> None:
        # The GUI library is loaded now, so the screens can be read; the window is not built yet,
        # so its initial geometry can still change.
        if self._saved is None:
            return
        try:
            import webview

            screens = [(s.x, s.y, s.width, s.height) for s in webview.screens]
        except Exception as err:  # noqa: BLE001 - a geometry is not worth failing the start
            log.debug("screens unknown: %s", err)
            screens = []
        fit = fit_geometry(self._saved, screens)
        window = self.window
        window.initial_width, window.initial_height = fit.width, fit.height
        if fit.x is not None and screens:
            # pywebview places the window relative to the primary screen.
            window.initial_x, window.initial_y = fit.x - screens[0][0], fit.y - screens[0][1]
            self._position = (fit.x, fit.y)

    def _on_before_show(self) -> None:
        # pywebview's Qt backend installs its own SIGINT handler when its loop starts; take it back.
        self._install_signal_handlers()

    def _on_moved(self, x: int, y: int) -> None:
        if self._state == "normal":
            self._position = (x, y)

    def _set_state(self, state: str) -> None:
        self._state = state

    def _on_closing(self):
        """False keeps the window open (the person chose to stay)."""
        if not self.quitting and self.active_downloads is not None:
            try:
                busy = self.active_downloads()
            except Exception as err:  # noqa: BLE001 - never keep a window open over a failed query
                log.warning("could not check the downloads before quitting: %s", err)
                busy = 0
            if busy:
                self._asking = True
                try:
                    confirmed = self.window.create_confirmation_dialog(QUIT_TITLE, QUIT_MESSAGE)
                finally:
                    self._asking = False
                if not confirmed and not self.quitting:
                    return False
        self._remember_geometry()
        return True

    def _remember_geometry(self) -> None:
        if self.data_dir is None or self.window is None or self._state == "minimized":
            return
        if self._state == "maximized":
            saved = self._saved or Geometry(*DEFAULT_SIZE)
            save_geometry(self.data_dir, Geometry(saved.width, saved.height, saved.x, saved.y, True))
            return
        try:
            width, height = self.window.gui.get_size(self.window.uid)
        except Exception as err:  # noqa: BLE001
            log.debug("window size unknown: %s", err)
            return
        if not width or not height:
            return
        x, y = self._position if self._position is not None else (None, None)
        save_geometry(self.data_dir, Geometry(int(width), int(height), x, y, False))

    def _report(self) -> None:
        """Print what the window shows once the page is ready: the packaged app's smoke test."""
        window = self.window
        seen: dict = {"window_title": window.title}
        placeholders = ("", "Loading model…", "No model loaded")
        try:
            deadline = time.monotonic() + 90
            named_by = None
            while time.monotonic() < deadline:
                seen["ready"] = window.evaluate_js("document.body.dataset.ready || ''")
                seen["model"] = window.evaluate_js("(document.getElementById('model-name') || {}).textContent || ''")
                if seen["ready"] == "true":
                    # The model's name follows the first status poll; give it a moment.
                    named_by = named_by or time.monotonic() + 15
                    if seen["model"] not in placeholders or time.monotonic() > named_by:
                        break
                time.sleep(0.25)
            seen["document_title"] = window.evaluate_js("document.title")
            seen["url"] = window.get_current_url()
        except Exception as err:  # noqa: BLE001 - reported, not swallowed
            seen["error"] = repr(err)
        print(SMOKE_PREFIX + json.dumps(seen), flush=True)


def _drop_on_top(window) -> None:
    try:
        window.on_top = False
    except Exception as err:  # noqa: BLE001 - the window closed meanwhile
        log.debug("on_top: %s", err)


def _answer_dialog_ok() -> None:
    """A quit signal while "Quit Tandem?" is open answers it with OK (the person is leaving anyway)."""
    try:
        from qtpy.QtCore import QTimer
        from qtpy.QtWidgets import QApplication, QMessageBox
    except Exception:  # noqa: BLE001 - not the Qt backend: the dialog stays for the person
        return

    def click() -> None:
        try:
            box = QApplication.activeModalWidget()
            if isinstance(box, QMessageBox):
                button = box.button(QMessageBox.StandardButton.Ok)
                if button is not None:
                    button.click()
        except Exception as err:  # noqa: BLE001 - an exception here would abort Qt
            log.debug("answering the dialog: %s", err)

    QTimer.singleShot(0, click)


def open_window(url: str, on_start: Callable[[object], None] | None = None, **options) -> Shell:
    """Show the window and block until it is closed; returns the Shell (for tests). See Shell."""
    shell = Shell(url, on_start=on_start, **options)
    shell.run()
    return shell
