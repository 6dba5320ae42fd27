"""llama.cpp's RPC backend (ggml-rpc), reached through ctypes: the server a worker runs, and the
device list a model is loaded with on the main machine.

ggml-rpc aborts the whole process when a connection fails or a server answers wrongly (there is
no error return on the client side). The client functions here are therefore only ever called in
a process of their own (runtime.pool.host); the main process never connects to a worker through
ggml, only through the worker's HTTP side (runtime.pool.network).
"""

from __future__ import annotations

import ctypes
import importlib
import os
from pathlib import Path

GGML_BACKEND_DEVICE_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}

_libs: dict[str, ctypes.CDLL] = {}


class RpcUnavailable(RuntimeError):
    """This llama-cpp-python build has no RPC backend."""


def _lib_dir() -> Path:
    import llama_cpp

    return Path(llama_cpp.__file__).parent / "lib"


def _lib(name: str) -> ctypes.CDLL:
    if name not in _libs:
        importlib.import_module("llama_cpp")  # loads libllama and the ggml libraries it needs first

        path = _lib_dir() / f"lib{name}.so"
        if not path.exists():
            raise RpcUnavailable(
                f"{path.name} is missing: this llama-cpp-python build has no RPC backend. "
                "Run ./dev.sh run (or ./dev.sh test) again: the set-up builds llama.cpp with GGML_RPC=ON.")
        _libs[name] = ctypes.CDLL(str(path), mode=os.RTLD_GLOBAL if hasattr(os, "RTLD_GLOBAL") else 0)
    return _libs[name]


def supported() -> bool:
    """The engine can pool machines: llama.cpp reports RPC support and the library is there."""
    try:
        import llama_cpp

        return bool(llama_cpp.llama_supports_rpc()) and (_lib_dir() / "libggml-rpc.so").exists()
    except Exception:  # noqa: BLE001 - no engine at all is "not supported"
        return False


def _ggml() -> ctypes.CDLL:
    lib = _lib("ggml")
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_name.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_name.restype = ctypes.c_char_p
    lib.ggml_backend_dev_description.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_description.restype = ctypes.c_char_p
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    lib.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                                            ctypes.POINTER(ctypes.c_size_t)]
    lib.ggml_backend_dev_memory.restype = None
    lib.ggml_backend_reg_dev_count.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_reg_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_reg_dev_get.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.ggml_backend_reg_dev_get.restype = ctypes.c_void_p
    return lib


def _rpc() -> ctypes.CDLL:
    if not supported():
        raise RpcUnavailable(
            "This llama-cpp-python build has no RPC backend (llama_supports_rpc() is false). "
            "Run ./dev.sh run again: its set-up builds llama.cpp with GGML_RPC=ON.")
    lib = _lib("ggml-rpc")
    lib.ggml_backend_rpc_start_server.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t,
                                                  ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p)]
    lib.ggml_backend_rpc_start_server.restype = None
    lib.ggml_backend_rpc_add_server.argtypes = [ctypes.c_char_p]
    lib.ggml_backend_rpc_add_server.restype = ctypes.c_void_p
    return lib


def _describe(lib, dev) -> dict:
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
    return {"name": lib.ggml_backend_dev_name(dev).decode(errors="replace"),
            "description": lib.ggml_backend_dev_description(dev).decode(errors="replace"),
            "type": GGML_BACKEND_DEVICE_TYPES.get(lib.ggml_backend_dev_type(dev), "other"),
            "free_bytes": int(free.value), "total_bytes": int(total.value)}


def local_devices() -> list[dict]:
    """This machine's ggml devices (the CPU, and GPUs when the build has them): what a worker serves."""
    lib = _ggml()
    return [_describe(lib, lib.ggml_backend_dev_get(i)) for i in range(lib.ggml_backend_dev_count())]


def serve(endpoint: str, n_threads: int, cache_dir: str | None = None, device_names: list[str] | None = None) -> None:
    """Serve this machine's devices (all of them, or those named) over ggml-rpc at `endpoint`
    (host:port). Blocks for as long as the server runs; it serves one client at a time."""
    rpc, lib = _rpc(), _ggml()
    devs = [lib.ggml_backend_dev_get(i) for i in range(lib.ggml_backend_dev_count())]
    if device_names:
        devs = [d for d in devs if lib.ggml_backend_dev_name(d).decode() in device_names]
    # a GPU worker serves its GPUs; the CPU only when it has nothing else
    accel = [d for d in devs if lib.ggml_backend_dev_type(d) != 0]
    chosen = accel or devs
    arr = (ctypes.c_void_p * len(chosen))(*chosen)
    rpc.ggml_backend_rpc_start_server(endpoint.encode(), cache_dir.encode() if cache_dir else None,
                                      n_threads, len(chosen), arr)


def local_gpu_device(lib, index: int):
    """This machine's `index`-th GPU among ggml's devices (the order CUDA, ROCm and Vulkan number
    them), before any worker is added."""
    devs = [lib.ggml_backend_dev_get(i) for i in range(lib.ggml_backend_dev_count())]
    devs = [d for d in devs if not lib.ggml_backend_dev_name(d).decode(errors="replace").startswith("RPC")]
    # discrete GPUs, as llama.cpp lists them by default (integrated ones only where there is none)
    gpus = [d for d in devs if lib.ggml_backend_dev_type(d) == 1] or [d for d in devs if lib.ggml_backend_dev_type(d) == 2]
    if not 0 <= index < len(gpus):
        raise RpcUnavailable(f"The plan keeps layers on GPU {index} of this machine, but this engine build sees "
                             f"{len(gpus)} GPU(s): plan the model again (Models, then Load).")
    return gpus[index]


def device_array(endpoints: list[str], local_gpu: int | None = None):
    """A NULL-terminated array of the workers' ggml devices, then this machine's GPU `local_gpu`
    when it keeps layers, for llama_model_params.devices. Connects to each worker: a failure
    aborts this process (call it only in a pool host)."""
    rpc, lib = _rpc(), _ggml()
    mine = local_gpu_device(lib, local_gpu) if local_gpu is not None else None
    devs = []
    for ep in endpoints:
        reg = rpc.ggml_backend_rpc_add_server(ep.encode())
        if not reg:
            raise RpcUnavailable(f"The worker at {ep} offers no devices.")
        if not lib.ggml_backend_reg_dev_count(reg):
            raise RpcUnavailable(f"The worker at {ep} offers no devices.")
        devs.append(lib.ggml_backend_reg_dev_get(reg, 0))  # its first device, the one the plan counted
    if mine is not None:
        devs.append(mine)
    return (ctypes.c_void_p * (len(devs) + 1))(*devs, None), len(devs)
