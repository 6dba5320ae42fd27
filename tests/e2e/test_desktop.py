"""The desktop window (pywebview on Qt WebEngine) shows the chat page of the local server."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_desktop_window_shows_the_chat_page():
    env = {
        **os.environ,
        "PYWEBVIEW_GUI": "qt",
        "QT_QPA_PLATFORM": "offscreen",
        # Chromium's sandbox cannot run as root (CI runs as root); a person's desktop keeps it.
        "QTWEBENGINE_DISABLE_SANDBOX": "1" if os.geteuid() == 0 else os.environ.get("QTWEBENGINE_DISABLE_SANDBOX", ""),
    }
    r = subprocess.run(
        [sys.executable, "-m", "tests.e2e.desktop_probe"], capture_output=True, text=True, env=env, timeout=180
    )
    assert r.returncode == 0, r.stderr[-3000:]
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert "error" not in seen, seen
    assert seen["title"] == "Tandem"
    assert seen["ready"] == "true"
    assert seen["model"] == "SmolLM2 135M Instruct (Q4_1)"
    assert seen["url"].startswith(seen["server"])
