"""Run in a child process by test_desktop: open the real desktop window on a real server, do one
thing with it through pywebview, print what it saw as JSON (the last line), close the window.

    python -m tests.e2e.desktop_probe              the chat page: model, title, readiness
    python -m tests.e2e.desktop_probe geometry DIR [WIDTH HEIGHT X Y]
                                                   the window's size and place as it opens with
                                                   the data folder DIR, then (when given) moved
                                                   and resized before it closes
    python -m tests.e2e.desktop_probe quit-ask     closing while a download runs asks first; a
                                                   SIGTERM while the question is open still quits
"""

import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from tandem.app import desktop
from tandem.app.server import ServerThread
from tests.conftest import make_settings

CONSOLE_CHECK = "tandem-probe: the console reaches stderr"


def chat_page(server: ServerThread, data: Path) -> dict:
    seen: dict = {"server": server.url}

    def on_start(window):
        try:
            window.events.loaded.wait(60)
            deadline = time.time() + 60
            while time.time() < deadline:
                seen["model"] = window.evaluate_js("document.getElementById('model-name').textContent")
                seen["ready"] = window.evaluate_js("document.body.dataset.ready || ''")
                if seen["ready"] == "true" and seen["model"] not in ("Loading model…", "No model loaded"):
                    break
                time.sleep(0.2)
            seen["title"] = window.evaluate_js("document.title")
            seen["url"] = window.get_current_url()
            # A known line, so that the test can tell the console is read at all.
            window.evaluate_js(f"console.warn({json.dumps(CONSOLE_CHECK)})")
            seen["console_check"] = True
        except Exception as err:  # reported to the test, never swallowed
            seen["error"] = repr(err)
        finally:
            window.destroy()

    desktop.open_window(server.url + "/", on_start=on_start)
    return seen


def geometry(server: ServerThread, data: Path, change: list[int]) -> dict:
    seen: dict = {}

    def on_start(window):
        try:
            window.events.shown.wait(60)
            time.sleep(0.5)
            seen["opened"] = [window.width, window.height, window.x, window.y]
            if change:
                width, height, x, y = change
                window.resize(width, height)
                window.move(x, y)
                deadline = time.time() + 10
                while time.time() < deadline and [window.width, window.height, window.x, window.y] != change:
                    time.sleep(0.1)
                time.sleep(0.5)  # the moved/resized events reach the shell from their own threads
                seen["changed"] = [window.width, window.height, window.x, window.y]
        except Exception as err:
            seen["error"] = repr(err)
        finally:
            window.destroy()

    desktop.open_window(server.url + "/", on_start=on_start, data_dir=data)
    saved = data / desktop.GEOMETRY_FILE
    seen["saved"] = json.loads(saved.read_text()) if saved.exists() else None
    return seen


def quit_ask(server: ServerThread, data: Path) -> dict:
    seen: dict = {"asked": 0}
    shell: desktop.Shell

    def active_downloads() -> int:
        seen["asked"] += 1
        return 1

    def on_start(window):
        try:
            window.events.loaded.wait(60)
            window.destroy()  # as if the person closed it: the question opens, the window stays
            deadline = time.time() + 20
            while time.time() < deadline and not shell._asking:
                time.sleep(0.1)
            seen["question_open"] = shell._asking
            time.sleep(0.5)
            seen["still_open"] = window.evaluate_js("document.title") == "Tandem"
            os.kill(os.getpid(), signal.SIGTERM)
        except Exception as err:
            seen["error"] = repr(err)
            window.destroy()

    shell = desktop.Shell(server.url + "/", on_start=on_start, active_downloads=active_downloads)
    shell.run()
    seen["quitting"] = shell.quitting
    return seen


def main(argv: list[str]) -> int:
    mode = argv[0] if argv else "chat"
    with tempfile.TemporaryDirectory() as tmp, ServerThread(make_settings(Path(tmp))) as server:
        if mode == "geometry":
            seen = geometry(server, Path(argv[1]), [int(v) for v in argv[2:6]])
        elif mode == "quit-ask":
            seen = quit_ask(server, Path(tmp))
        else:
            seen = chat_page(server, Path(tmp))
    print(json.dumps(seen), flush=True)
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    # What the probe saw is printed and the server stopped: end here. Qt WebEngine's teardown at
    # interpreter exit can hang on a loaded machine, which would read as a failed probe.
    sys.stderr.flush()
    os._exit(code)
