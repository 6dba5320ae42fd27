"""Where the static UI lives: tandem/ui beside tandem/app when installed, ui/ beside app/ in a checkout."""

from __future__ import annotations

from pathlib import Path


def ui_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "ui", here.parent / "ui"):
        if (candidate / "index.html").is_file():
            return candidate
    raise FileNotFoundError("Tandem's UI files are missing; reinstall Tandem.")
