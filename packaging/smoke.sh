#!/usr/bin/env bash
# Smoke test of the built app (packaging/build.sh first), on a virtual screen (xvfb-run):
#   it starts, answers GET /api/health with the built-in model loaded, shows a window titled
#   "Tandem" holding Tandem's page (read back through pywebview: --smoke-test), a second start
#   brings that window forward instead of starting again, its console has no
#   Content-Security-Policy violations, and SIGTERM ends it with status 0, its lock file removed.
#   packaging/smoke.sh [path/to/dist/tandem/tandem]
# Needs: xvfb-run (apt-get install xvfb xauth), curl; xwininfo and xprop (x11-utils) when present.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
APP=$(realpath "${1:-$ROOT/dist/tandem/tandem}")

if [ ! -x "$APP" ]; then
  echo "smoke.sh: no built app at $APP; build it with packaging/build.sh" >&2
  exit 2
fi
if [ -z "${TANDEM_SMOKE_SCREEN:-}" ]; then
  command -v xvfb-run >/dev/null || { echo "smoke.sh: xvfb-run is missing: apt-get install xvfb xauth" >&2; exit 2; }
  exec xvfb-run -a -s "-screen 0 1280x1024x24" env TANDEM_SMOKE_SCREEN=1 "$0" "$APP"
fi

DATA=$(mktemp -d)
OUT=$DATA/stdout.log
ERR=$DATA/stderr.log
PID=
cleanup() {
  [ -n "$PID" ] && kill -KILL "$PID" 2>/dev/null || true
  rm -rf "$DATA"
}
trap cleanup EXIT
fail() {
  echo "smoke.sh: FAILED: $*" >&2
  echo "--- stdout" >&2; cat "$OUT" >&2 || true
  echo "--- stderr (last 40 lines)" >&2; tail -n 40 "$ERR" >&2 || true
  exit 1
}

export TANDEM_DATA_DIR=$DATA PYWEBVIEW_GUI=qt
# Chromium's sandbox cannot run as root (containers, CI); a person's desktop keeps it.
[ "$(id -u)" -eq 0 ] && export QTWEBENGINE_DISABLE_SANDBOX=1
export QT_LOGGING_RULES="js=true"  # every console message of the page reaches stderr

started=$(date +%s.%N)
"$APP" --port 0 --smoke-test >"$OUT" 2>"$ERR" &
PID=$!

url=
for _ in $(seq 1 240); do
  kill -0 "$PID" 2>/dev/null || fail "the app exited early"
  url=$(sed -n 's/.*"url": *"\([^"]*\)".*/\1/p' "$DATA/tandem.lock" 2>/dev/null || true)
  [ -n "$url" ] && break
  sleep 0.5
done
[ -n "$url" ] || fail "no server address in $DATA/tandem.lock after 120 s"
health=$(curl -sf --noproxy '*' "$url/api/health") || fail "GET $url/api/health did not answer"
echo "$health" | grep -q '"status":"ok"' || fail "health is not ok: $health"
echo "$health" | grep -q '"state":"idle"\|"state":"busy"' || fail "the built-in model is not loaded: $health"
listening=$(date +%s.%N)

seen=
for _ in $(seq 1 240); do
  kill -0 "$PID" 2>/dev/null || fail "the app exited before its window reported"
  seen=$(sed -n 's/^tandem-smoke: //p' "$OUT")
  [ -n "$seen" ] && break
  sleep 0.5
done
[ -n "$seen" ] || fail "the window did not report its page within 120 s"
echo "$seen" | grep -q '"window_title": "Tandem"' || fail "window title: $seen"
echo "$seen" | grep -q '"document_title": "Tandem"' || fail "page title: $seen"
echo "$seen" | grep -q '"ready": "true"' || fail "the page did not get ready: $seen"
echo "$seen" | grep -q '"error"' && fail "the window reported an error: $seen"

x_window=
if command -v xwininfo >/dev/null; then
  x_window=$(xwininfo -root -tree | grep '"Tandem"' | head -n 1 || true)
  [ -n "$x_window" ] || fail "no X window titled Tandem"
  if command -v xprop >/dev/null; then
    wm_class=$(xprop -id "$(echo "$x_window" | awk '{print $1}')" WM_CLASS | cut -d= -f2 | tr -d ' ')
    x_window="$x_window  WM_CLASS=$wm_class"
  fi
fi

# A second start finds this one (same data folder) and brings its window forward.
second=$("$APP" 2>&1) || fail "a second start failed: $second"
echo "$second" | grep -q "Tandem is already running at $url/; its window was brought forward." \
  || fail "a second start did not bring the window forward: $second"

if grep -q "Content Security Policy\|Refused to" "$ERR"; then
  fail "the page's console reports Content-Security-Policy violations: $(grep -m3 'Refused to' "$ERR")"
fi

kill -TERM "$PID"
rc=0
wait "$PID" || rc=$?
PID=
[ "$rc" -eq 0 ] || fail "exit status $rc after SIGTERM (expected 0)"
[ ! -e "$DATA/tandem.lock" ] || fail "the lock file was left behind after a clean exit"
grep -q "Traceback" "$ERR" && fail "a traceback on stderr"

echo "smoke.sh: OK: $APP"
echo "  listening after $(echo "$listening - $started" | bc 2>/dev/null || echo '?') s; health: $(echo "$health" | cut -c1-120)…"
echo "  window: $seen"
[ -n "$x_window" ] && echo "  X window: $x_window"
echo "  second start: $second"
echo "  SIGTERM: exit status 0, lock file removed"
