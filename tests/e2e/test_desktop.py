"""The desktop window (pywebview on Qt WebEngine) shows the chat page of the local server, and
behaves like an application's: one instance per data folder, a clean exit on SIGTERM and SIGINT,
no Content-Security-Policy violations in its console, its size and place remembered, a question
before quitting during a download."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tandem.app import desktop
from tandem.app.api import window as window_api
from tandem.app.instance import LOCK_NAME, InstanceLock, Running
from tests.conftest import read_sse

pytestmark = pytest.mark.e2e

TANDEM = [sys.executable, "-m", "tandem.app"]
PROBE = [sys.executable, "-m", "tests.e2e.desktop_probe"]
CONSOLE_CHECK = "tandem-probe: the console reaches stderr"
CSP_MARKERS = ("Content Security Policy", "Refused to")


def qt_env(**extra) -> dict:
    env = {
        **os.environ,
        "PYWEBVIEW_GUI": "qt",
        "QT_QPA_PLATFORM": "offscreen",
        # Every console message of the page (not only errors) goes to stderr, where tests read it.
        "QT_LOGGING_RULES": "js=true",
        # Chromium's sandbox cannot run as root (CI runs as root); a person's desktop keeps it.
        "QTWEBENGINE_DISABLE_SANDBOX": "1" if os.geteuid() == 0 else os.environ.get("QTWEBENGINE_DISABLE_SANDBOX", ""),
        **extra,
    }
    env.pop("TANDEM_PORT", None)
    env.pop("TANDEM_DATA_DIR", None)
    return env


def headless_env(**extra) -> dict:
    env = {**os.environ, **extra}
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM", "TANDEM_PORT", "TANDEM_DATA_DIR"):
        env.pop(var, None)
    return env


def csp_violations(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if any(m in ln for m in CSP_MARKERS)]


class Tandem:
    """A real `tandem` process on a data folder, its output kept in files (no pipe to fill up)."""

    def __init__(self, data: Path, *args: str, env: dict):
        self.data = data
        data.mkdir(parents=True, exist_ok=True)
        self._out = open(data.parent / f"{data.name}-stdout.log", "w+")
        self._err = open(data.parent / f"{data.name}-stderr.log", "w+")
        # The data folder after the subcommand: argparse lets a subcommand's defaults win.
        self.proc = subprocess.Popen(TANDEM + [*args, "--data-dir", str(data)], stdout=self._out,
                                     stderr=self._err, env=env, text=True)

    @property
    def stdout(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return Path(self._out.name).read_text()

    @property
    def stderr(self) -> str:
        if not self._err.closed:
            self._err.flush()
        return Path(self._err.name).read_text()

    def wait_listening(self, timeout: float = 120) -> str:
        """The server's URL, once the lock names it and it answers."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, f"tandem exited early ({self.proc.returncode}): {self.stderr[-2000:]}"
            try:
                lock = json.loads((self.data / LOCK_NAME).read_text())
            except (OSError, ValueError):
                lock = {}
            if lock.get("url") and lock.get("pid") == self.proc.pid:
                if httpx.get(lock["url"] + "/api/health", timeout=5).status_code == 200:
                    return lock["url"]
            time.sleep(0.2)
        raise AssertionError(f"tandem did not start within {timeout} s: {self.stderr[-2000:]}")

    def wait_for(self, text: str, timeout: float = 30) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if text in self.stderr or text in self.stdout:
                return True
            time.sleep(0.1)
        return False

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._out.close()
        self._err.close()


@pytest.fixture()
def procs():
    started: list[Tandem] = []
    yield started
    for p in started:
        p.close()


# --- the window shows the page, and its console stays clean


@pytest.fixture(scope="module")
def chat_probe():
    r = subprocess.run(PROBE, capture_output=True, text=True, env=qt_env(), timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


def test_desktop_window_shows_the_chat_page(chat_probe):
    seen, _ = chat_probe
    assert "error" not in seen, seen
    assert seen["title"] == "Tandem"
    assert seen["ready"] == "true"
    assert seen["model"] == "SmolLM2 135M Instruct (Q4_1)"
    assert seen["url"].startswith(seen["server"])


def test_window_console_has_no_csp_violations(chat_probe):
    seen, stderr = chat_probe
    assert seen.get("console_check") is True
    # The page's console does reach stderr (else an empty list below would prove nothing) ...
    assert CONSOLE_CHECK in stderr, stderr[-3000:]
    # ... and nothing there is refused by the page's Content-Security-Policy (pywebview's
    # injected <style> for text_select=False was, until the window allowed selecting text).
    assert csp_violations(stderr) == []


# --- one Tandem per data folder


def test_second_start_brings_the_running_window_forward(tmp_path, procs):
    first = Tandem(tmp_path / "data", "--port", "0", env=qt_env())
    procs.append(first)
    url = first.wait_listening()

    started = time.time()
    r = subprocess.run(TANDEM + ["--data-dir", str(first.data)], capture_output=True, text=True,
                       env=qt_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"Tandem is already running at {url}/; its window was brought forward." in r.stdout
    assert time.time() - started < 30  # no second server, no model loaded
    assert first.wait_for("this window was brought forward"), first.stderr[-2000:]

    r = subprocess.run(TANDEM + ["--browser", "--data-dir", str(first.data)], capture_output=True, text=True,
                       env=qt_env(BROWSER="true"), timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"Tandem is already running at {url}/; opened it in the browser." in r.stdout

    assert first.stop() == 0, first.stderr[-3000:]
    assert not (first.data / LOCK_NAME).exists()
    assert csp_violations(first.stderr) == []


def test_a_headless_server_is_found_too(tmp_path, procs):
    first = Tandem(tmp_path / "data", "serve", "--port", "0", env=headless_env())
    procs.append(first)
    url = first.wait_listening()
    # No window to bring forward there (409), and no display here: the address to open.
    r = subprocess.run(TANDEM + ["--data-dir", str(first.data)], capture_output=True, text=True,
                       env=headless_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"Tandem is already running at {url}/; open that address in a browser." in r.stdout
    # `tandem serve` on the same data without another port would be a second server: refused.
    r = subprocess.run(TANDEM + ["serve", "--data-dir", str(first.data)], capture_output=True, text=True,
                       env=headless_env(), timeout=60)
    assert r.returncode == 1
    assert f"Tandem is already running at {url}/" in r.stderr and "--port" in r.stderr
    assert "Traceback" not in r.stderr
    assert first.stop(signal.SIGINT) == 0
    assert not (first.data / LOCK_NAME).exists()


def test_a_stale_lock_is_replaced(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (data / LOCK_NAME).write_text(json.dumps({"pid": gone.pid, "url": "http://127.0.0.1:9"}))
    lock = InstanceLock(data)
    assert lock.acquire(wait_s=5) is None  # the process is gone: the lock is this process's now
    assert json.loads((data / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (data / LOCK_NAME).exists()

    # A live process whose server does not answer (a pid reused by another program): stale too.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (data / LOCK_NAME).write_text(json.dumps({"pid": other.pid, "url": "http://127.0.0.1:9"}))
        assert lock.acquire(wait_s=5) is None
        lock.publish("http://127.0.0.1:1234")
        assert json.loads((data / LOCK_NAME).read_text())["url"] == "http://127.0.0.1:1234"
        lock.release()
    finally:
        other.kill()
        other.wait()


def test_a_lock_naming_a_live_server_is_respected(tmp_path, server):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": holder.pid, "url": server.url}))
        assert InstanceLock(tmp_path).acquire(wait_s=5) == Running(holder.pid, server.url)
        assert (tmp_path / LOCK_NAME).exists()
    finally:
        holder.kill()
        holder.wait()


def test_focus_endpoint(server):
    with httpx.Client(base_url=server.url, timeout=10) as client:
        r = client.post("/api/app/focus")
        assert r.status_code == 409 and r.json()["error"]["code"] == "no_window"
        calls = []
        window_api.set_focus_handler(lambda: calls.append(1))
        try:
            assert client.post("/api/app/focus").json() == {"focused": True}
        finally:
            window_api.set_focus_handler(None)
        assert calls == [1]
        # Another site's page may not raise the window.
        r = client.post("/api/app/focus", headers={"Origin": "http://evil.example"})
        assert r.status_code == 403


# --- quitting


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_quit_signal_ends_replies_and_exits_0(tmp_path, procs, sig):
    app = Tandem(tmp_path / "data", "--port", "0", env=qt_env())
    procs.append(app)
    url = app.wait_listening()
    last = None
    with httpx.Client(base_url=url, timeout=30) as client:
        cid = client.post("/api/conversations", json={}).json()["id"]
        body = {"content": "Tell me a very long story about a lighthouse keeper and the sea.", "max_tokens": 2000}
        sent = False
        try:
            with client.stream("POST", f"/api/conversations/{cid}/messages", json=body) as r:
                for event, data in read_sse(r):
                    last = (event, data)
                    if event == "token" and not sent:
                        app.proc.send_signal(sig)  # mid-reply
                        sent = True
        except httpx.TransportError:
            pass  # the server went away while the stream closed: ended too
        assert sent, last
    assert app.proc.wait(60) == 0, app.stderr[-3000:]
    app.close()
    assert "Traceback" not in app.stderr and "Aborted" not in app.stderr
    if last and last[0] == "done":
        assert last[1]["message"]["status"] == "stopped"
    assert not (app.data / LOCK_NAME).exists()
    # The database was closed cleanly (no WAL left to replay) and the partial reply is stored.
    wal = app.data / "tandem.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    with sqlite3.connect(app.data / "tandem.db") as db:
        statuses = [s for (s,) in db.execute("select status from messages where role = 'assistant'")]
    assert statuses == ["stopped"]


def test_closing_during_a_download_asks_first():
    r = subprocess.run(PROBE + ["quit-ask"], capture_output=True, text=True, env=qt_env(), timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert "error" not in seen, seen
    assert seen["asked"] >= 1
    assert seen["question_open"] is True and seen["still_open"] is True  # the window waits for the answer
    assert seen["quitting"] is True  # SIGTERM with the question open still quits, status 0


class FakeWindow:
    def __init__(self, answer: bool):
        self.answer, self.asked = answer, []

    def create_confirmation_dialog(self, title, message):
        self.asked.append((title, message))
        return self.answer


@pytest.mark.parametrize("answer", [True, False])
def test_the_quit_question_decides(answer):
    shell = desktop.Shell("http://127.0.0.1:1/", active_downloads=lambda: 1)
    shell.window = FakeWindow(answer)
    assert shell._on_closing() is answer  # False keeps the window open
    assert shell.window.asked == [(desktop.QUIT_TITLE, desktop.QUIT_MESSAGE)]

    idle = desktop.Shell("http://127.0.0.1:1/", active_downloads=lambda: 0)
    idle.window = FakeWindow(answer)
    assert idle._on_closing() is True and idle.window.asked == []

    leaving = desktop.Shell("http://127.0.0.1:1/", active_downloads=lambda: 1)
    leaving.window, leaving.quitting = FakeWindow(answer), True  # a signal: no question
    assert leaving._on_closing() is True and leaving.window.asked == []


# --- size and place


def test_window_geometry_is_remembered(tmp_path):
    # Xvfb when there is one: the offscreen platform invents a 2-pixel frame that moves the window
    # on every start, which no real desktop does.
    wrap = ["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24"] if shutil.which("xvfb-run") else []
    env = qt_env()
    if wrap:
        env.pop("QT_QPA_PLATFORM")
    data = tmp_path / "data"
    data.mkdir()

    def probe(*change: int) -> dict:
        r = subprocess.run(wrap + PROBE + ["geometry", str(data), *map(str, change)], capture_output=True,
                           text=True, env=env, timeout=180)
        assert r.returncode == 0, r.stderr[-3000:]
        seen = json.loads(r.stdout.strip().splitlines()[-1])
        assert "error" not in seen, seen
        return seen

    first = probe(640, 480, 30, 40)
    assert first["changed"][:2] == [640, 480]
    assert first["saved"]["width"] == 640 and first["saved"]["height"] == 480
    again = probe()
    assert again["opened"][:2] == [640, 480]
    tolerance = 0 if wrap else 4
    assert abs(again["opened"][2] - first["changed"][2]) <= tolerance
    assert abs(again["opened"][3] - first["changed"][3]) <= tolerance


def test_saved_geometry_is_fitted_to_the_screens(tmp_path):
    screens = [(0, 0, 1920, 1080), (1920, 0, 1280, 1024)]
    fit = desktop.fit_geometry
    G = desktop.Geometry
    assert fit(G(800, 600, 100, 50), screens) == G(800, 600, 100, 50)
    assert fit(G(800, 600, 2000, 100), screens) == G(800, 600, 2000, 100)  # on the second screen
    # A monitor unplugged since: centred on the primary screen instead of out of reach.
    assert fit(G(800, 600, 5000, 100), screens) == G(800, 600, None, None)
    # Larger than its screen, or smaller than the window's minimum: clamped.
    assert fit(G(5000, 4000, 0, 0), screens) == G(1920, 1080, 0, 0)
    assert fit(G(10, 10, 0, 0), screens) == G(*desktop.MIN_SIZE, 0, 0)
    # Hanging off the right edge: pulled back so that all of it shows.
    assert fit(G(800, 600, 1800, 0), screens[:1]) == G(800, 600, 1120, 0)
    assert fit(G(800, 600, 10, 10), []) == G(800, 600, None, None)

    (tmp_path / desktop.GEOMETRY_FILE).write_text('{"width": 99999999, "height": 600}')
    assert desktop.load_geometry(tmp_path) is None
    (tmp_path / desktop.GEOMETRY_FILE).write_text("not json")
    assert desktop.load_geometry(tmp_path) is None
    desktop.save_geometry(tmp_path, G(700, 500, 5, 6))
    assert desktop.load_geometry(tmp_path) == G(700, 500, 5, 6)
