"""CPU-only decode of a synthetic 7B-shaped Q4_0 model with whichever llama_cpp is first on the path
(scripts/cpu_build_compare.sh runs it once per build): SHAPE, TOKENS and THREADS (a list) from the
environment. Tells whether a build's CPU code, or the machine, sets the CPU layers' speed."""
import os
import sys

sys.path.insert(0, os.getcwd())
import llama_cpp  # noqa: E402
from tandem.runtime.engine import ModelWorker, LoadParams, SamplingParams  # noqa: E402
from tandem.runtime.synth import preset, write_model  # noqa: E402

shape = os.environ.get("SHAPE", "7b")
tokens = int(os.environ.get("TOKENS", "48"))
path = f"/tmp/cmp-{shape}.gguf"
if not os.path.exists(path):
    write_model(path, preset(shape), fill="random")
info = llama_cpp.llama_print_system_info()
print("build:", info.decode() if isinstance(info, bytes) else info, flush=True)
for threads in [int(t) for t in os.environ.get("THREADS", "16,8,4").split(",")]:
    s = ModelWorker.open(LoadParams(path=path, n_ctx=2048, n_gpu_layers=0, n_threads=threads,
                                      n_threads_batch=threads, flash_attn=True))
    try:
        r = s.submit([{"role": "user", "content": "Write about the sea."}],
                     SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)).result()
    finally:
        s.close()
    print(f"threads {threads}: decode {r.stats.decode_tps:.2f} tok/s ({r.stats.completion_tokens} tokens)", flush=True)
