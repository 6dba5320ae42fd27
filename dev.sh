#!/usr/bin/env bash
# Set up Tandem from a checkout and run it or its tests.
#   ./dev.sh run    install what is missing, then start Tandem (desktop window, or a browser URL)
#   ./dev.sh test   install what is missing (test tools, Chromium), then run every test
#   ./dev.sh package  install what is missing (PyInstaller), then build the app folder in dist/tandem
# System packages are installed with apt-get when run as root; otherwise the command to run is shown.
set -euo pipefail
cd "$(dirname "$0")"

VENV=${TANDEM_VENV:-.venv}
PYTHON=${PYTHON:-python3}

# Building llama-cpp-python needs a C++ toolchain; Python needs venv.
APT_BUILD="python3 python3-venv python3-dev build-essential git"
# The desktop window (pywebview on Qt WebEngine) needs these shared libraries.
APT_DESKTOP="libnss3 libgbm1 libxcomposite1 libxdamage1 libxrandr2 libxtst6 libdbus-1-3 libfontconfig1
  libxkbcommon0 libxkbcommon-x11-0 libasound2 libxkbfile1 libgl1 libegl1 libxcb-cursor0 libxcb-icccm4
  libxcb-keysyms1 libxcb-image0 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xfixes0
  libxcb-xkb1 libxcb-dri3-0"
# Browser tests drive Debian's Chromium; the desktop test can also run on a virtual screen.
APT_TEST="chromium xvfb xauth"

apt_install() {
  command -v dpkg-query >/dev/null || return 0
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "dev.sh: installing system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "dev.sh: missing system packages; install them with:"
    echo "  sudo apt-get install -y ${missing[*]}"
  fi
}

# llama.cpp with its RPC backend (GGML_RPC=ON), so that `tandem worker` machines can take layers, and
# without its AMX matrix kernels: on Sapphire Rapids-class CPUs (AMX_INT8) they crash the first
# prompt llama.cpp 0.3.36 evaluates (a segfault in ggml_backend_amx_mul_mat); undefining the macro
# that -march=native sets leaves the AVX-512 kernels and the weight repacking in place.
# pip's own wheel cache would hand back a build without these: the build is kept in a folder of its own.
ENGINE_PIN=$(grep -o 'llama-cpp-python==[0-9.]*' pyproject.toml)
ENGINE_WHEELS=${TANDEM_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/tandem/engine-rpc-noamx}
ENGINE_CMAKE="-DGGML_RPC=ON -DCMAKE_C_FLAGS=-U__AMX_INT8__ -DCMAKE_CXX_FLAGS=-U__AMX_INT8__"

engine_ready() {
  "$VENV/bin/python" -c "
import llama_cpp, sys
info = llama_cpp.llama_print_system_info().decode()
sys.exit(0 if llama_cpp.llama_supports_rpc() and 'AMX_INT8 = 1' not in info else 1)" 2>/dev/null
}

install_engine() {
  engine_ready && return 0
  local version=${ENGINE_PIN#*==} wheel
  wheel=$(ls "$ENGINE_WHEELS"/llama_cpp_python-"$version"-*.whl 2>/dev/null | head -n 1 || true)
  if [ -z "$wheel" ]; then
    echo "dev.sh: building llama.cpp $version with its RPC backend (several minutes, once per machine)"
    mkdir -p "$ENGINE_WHEELS"
    CMAKE_ARGS="$ENGINE_CMAKE ${CMAKE_ARGS:-}" "$VENV/bin/python" -m pip wheel --quiet --no-deps --no-cache-dir --no-binary llama-cpp-python \
      "$ENGINE_PIN" -w "$ENGINE_WHEELS"
    wheel=$(ls "$ENGINE_WHEELS"/llama_cpp_python-"$version"-*.whl | head -n 1)
  fi
  "$VENV/bin/python" -m pip install --quiet --force-reinstall --no-deps "$wheel"
}

setup() {
  # shellcheck disable=SC2086
  apt_install $APT_BUILD $APT_DESKTOP "$@"
  if [ ! -x "$VENV/bin/python" ]; then
    echo "dev.sh: creating the virtual environment in $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip --version >/dev/null 2>&1 || "$VENV/bin/python" -m ensurepip --quiet
  install_engine  # before the dependencies: pip then finds llama-cpp-python there, built with RPC
  local stamp="$VENV/.tandem-installed"
  local want
  want=$(sha256sum pyproject.toml | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "dev.sh: installing Tandem and its dependencies"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e ".[test]"
    install_engine  # a new pin in pyproject.toml was just installed without RPC: build that one with it
    echo "$want" > "$stamp"
  fi
}

case "${1:-run}" in
  run)
    setup
    shift || true
    exec "$VENV/bin/tandem" "$@"
    ;;
  test)
    # shellcheck disable=SC2086
    setup $APT_TEST
    shift || true
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  package)
    setup
    shift || true
    TANDEM_VENV=$VENV exec packaging/build.sh
    ;;
  *)
    echo "usage: ./dev.sh run [tandem options] | ./dev.sh test [pytest options] | ./dev.sh package" >&2
    exit 2
    ;;
esac
