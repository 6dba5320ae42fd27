"""Run in a child process by test_desktop: open the real desktop window on a real server, read
the page through pywebview's evaluate_js, print what it saw as JSON, close the window."""

import json
import sys
import tempfile
import time
from pathlib import Path

from tandem.app import desktop
from tandem.app.server import ServerThread
from tests.conftest import make_settings


def main() -> int:
    seen: dict = {}

    def on_start(window):
        try:
            window.events.loaded.wait(60)
            deadline = time.time() + 60
            while time.time() < deadline:
                seen["model"] = window.evaluate_js("document.getElementById('model-name').textContent")
                seen["ready"] = window.evaluate_js("document.body.dataset.ready || ''")
                if seen["ready"] == "true" and seen["model"] != "Loading model…":
                    break
                time.sleep(0.2)
            seen["title"] = window.evaluate_js("document.title")
            seen["url"] = window.get_current_url()
        except Exception as err:  # reported to the test, never swallowed
            seen["error"] = repr(err)
        finally:
            window.destroy()

    with tempfile.TemporaryDirectory() as data, ServerThread(make_settings(Path(data))) as server:
        seen["server"] = server.url
        desktop.open_window(server.url + "/", on_start=on_start)
    print(json.dumps(seen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
