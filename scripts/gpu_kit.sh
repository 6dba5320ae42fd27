#!/usr/bin/env bash
# Build gpu_kit/ (ignored by git): what a bare GPU machine needs besides the checkout to run
# scripts/gpu_validate.py: the CUDA build of llama-cpp-python, the pure-Python packages the
# runtime imports (and psutil's abi3 build), and a 5 MB GGUF carrying SmolLM2's tokenizer for the
# synthetic models, and this machine's native CPU build. Send it with the run's carry list: ["gpu_kit"]; run scripts/gpu_run.sh there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
CUDA_TAR=${CUDA_TAR:-../shared/gpu/llama_cpp_cuda.tar.xz}
rm -rf gpu_kit && mkdir -p gpu_kit/site
cp "$CUDA_TAR" gpu_kit/
SITE=$($PY -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
for pkg in gguf yaml diskcache psutil typing_extensions.py; do
  cp -r "$SITE/$pkg" gpu_kit/site/
done
find gpu_kit/site -name __pycache__ -prune -exec rm -rf {} +
rm -f gpu_kit/site/yaml/_yaml*.so   # PyYAML falls back to pure Python on any interpreter
$PY -c "from tandem.runtime.synth import preset, write_model; write_model('gpu_kit/tokenizer.gguf', preset('tiny'), fill='zeros')"
# this machine's own (CPU-only, native) build, for scripts/cpu_build_compare.sh
tar -C "$SITE" -cJf gpu_kit/llama_cpp_cpu.tar.xz --exclude=__pycache__ llama_cpp
du -sh gpu_kit
