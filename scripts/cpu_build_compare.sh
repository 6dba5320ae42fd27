#!/usr/bin/env bash
# On the GPU machine (with gpu_kit/ from scripts/gpu_kit.sh carried along): CPU-only decode with the
# CUDA build (its CPU code is AVX2 only) against a native build of this machine, twice each.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/gpu_kit/site:$PWD" TANDEM_SYNTH_TOKENIZER="$PWD/gpu_kit/tokenizer.gguf" PYTHONUNBUFFERED=1
export LD_LIBRARY_PATH="/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
CUDA_SITE=$(mktemp -d); tar -C "$CUDA_SITE" -xJf gpu_kit/llama_cpp_cuda.tar.xz
CPU_SITE=$(mktemp -d); tar -C "$CPU_SITE" -xJf gpu_kit/llama_cpp_cpu.tar.xz
for round in 1 2; do
  echo "== round $round: CUDA build"; PYTHONPATH="$CUDA_SITE:$PYTHONPATH" timeout 150 python3 scripts/cpu_build_compare.py
  echo "== round $round: native CPU build"; PYTHONPATH="$CPU_SITE:$PYTHONPATH" timeout 150 python3 scripts/cpu_build_compare.py
done
