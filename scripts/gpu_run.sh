#!/usr/bin/env bash
# On the GPU machine (see docs/gpu-validation.md): unpack the CUDA build from gpu_kit/ and run
# the validation; results go to $OUT (or the current folder).
set -euo pipefail
cd "$(dirname "$0")/.."
SITE=$(mktemp -d)
tar -C "$SITE" -xJf gpu_kit/llama_cpp_cuda.tar.xz
export PYTHONPATH="$SITE:$PWD/gpu_kit/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export LD_LIBRARY_PATH="/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TANDEM_SYNTH_TOKENIZER="$PWD/gpu_kit/tokenizer.gguf"
OUT_DIR=${OUT:-.}
python3 -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, 'GPU offload:', llama_cpp.llama_supports_gpu_offload())"
python3 scripts/gpu_validate.py --out "$OUT_DIR/gpu_validate.json" --workdir "${WORKDIR:-/tmp/tandem-gpu}" "$@" \
  2>&1 | tee "$OUT_DIR/gpu_validate.txt"
