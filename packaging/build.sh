#!/usr/bin/env bash
# Build Tandem as one folder for this OS with PyInstaller: dist/tandem/ (and dist/Tandem.app on
# macOS). On Linux, also dist/tandem/tandem.desktop, a launcher entry pointing at this build.
#   packaging/build.sh            (from any directory; ./dev.sh package sets up the venv first)
# PYTHON_FOR_BUILD: the Python with Tandem's dependencies (default: the venv of ./dev.sh, .venv/).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

VENV=${TANDEM_VENV:-.venv}
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
PY=${PYTHON_FOR_BUILD:-$VENV/bin/python}
if [ ! -x "$PY" ]; then
  echo "build.sh: no Python at $PY; run ./dev.sh package (it creates .venv), or set PYTHON_FOR_BUILD." >&2
  exit 2
fi
if ! "$PY" -c "import PyInstaller, setuptools, sys; v = int(setuptools.__version__.split('.')[0]); sys.exit(v < 77)" 2>/dev/null; then
  echo "build.sh: installing PyInstaller and setuptools>=77 into $(dirname "$(dirname "$PY")")"
  "$PY" -m pip install --quiet "pyinstaller>=6.10" "setuptools>=77"
fi

"$PY" -m PyInstaller --noconfirm --clean --log-level WARN \
  --distpath "$ROOT/dist" --workpath "$ROOT/build/package/work" packaging/tandem.spec

APP="$ROOT/dist/tandem"
case "$(uname -s)" in
  Linux)
    ICON=$(find "$APP" -path "*tandem/assets/icon-256.png" | head -n 1)
    sed -e "s|@EXEC@|\"$APP/tandem\"|" -e "s|@ICON@|$ICON|" assets/tandem.desktop > "$APP/tandem.desktop"
    chmod +x "$APP/tandem.desktop"
    echo
    echo "Built $APP ($(du -sh "$APP" | cut -f1)). Start it with: $APP/tandem"
    echo "To add Tandem to your applications menu:"
    echo "  install -Dm644 \"$APP/tandem.desktop\" ~/.local/share/applications/tandem.desktop"
    echo "  update-desktop-database ~/.local/share/applications 2>/dev/null || true"
    ;;
  Darwin)
    echo
    echo "Built $ROOT/dist/Tandem.app; drag it into /Applications."
    ;;
  *)
    echo
    echo "Built $APP; start it with $APP/tandem"
    ;;
esac
