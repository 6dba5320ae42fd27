#!/usr/bin/env bash
# What the engine micro-benchmark adds to Tandem's first start: `tandem serve` in a fresh data
# folder, from launch to "running at" (the built-in model loaded), with TANDEM_ENGINE_BENCH off and
# on, each followed by a second start in the same folder (everything cached). Runs twice.
#   scripts/first_start.sh
set -u
cd "$(dirname "$0")/.."

started() {  # wait (at most 120 s) for the server's "running at" line in $1
  for _ in $(seq 2400); do grep -q "running at" "$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "no start: $(cat "$1")" >&2; exit 1
}

for bench in 0 1 0 1; do
  d=$(mktemp -d)
  s=$(date +%s.%N)
  TANDEM_ENGINE_BENCH=$bench TANDEM_DATA_DIR=$d .venv/bin/tandem serve --port 0 > $d/out.txt 2>&1 &
  pid=$!
  started "$d/out.txt"
  e=$(date +%s.%N)
  url=$(grep -o "http://[0-9.:]*" $d/out.txt | head -1)
  rates=$(curl -s "$url/api/hardware" | python3 -c "import json,sys; m=json.load(sys.stdin)['memory']; print(len(m['engine_rates']), len(m['kv_costs']))")
  kill $pid; wait $pid 2>/dev/null
  # second start, same folder
  s2=$(date +%s.%N)
  TANDEM_ENGINE_BENCH=$bench TANDEM_DATA_DIR=$d .venv/bin/tandem serve --port 0 > $d/out2.txt 2>&1 &
  pid=$!
  started "$d/out2.txt"
  e2=$(date +%s.%N)
  kill $pid; wait $pid 2>/dev/null
  echo "TANDEM_ENGINE_BENCH=$bench first start $(python3 -c "print(round($e - $s, 1))") s (rates, kv: $rates), second start $(python3 -c "print(round($e2 - $s2, 1))") s"
  rm -rf "$d"
done
