"""The hardware probe: collect raw readings per source (the only impure part), then build the
HardwareProfile from them with pure functions. A source that fails adds a line to `problems`."""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import sys
from pathlib import Path
from typing import Callable

from tandem.runtime.hardware.cpu import build_cpu, parse_sysctl
from tandem.runtime.hardware.gpu import apple_gpu, gpus_from_drm, gpus_from_nvml
from tandem.runtime.hardware.profile import DiskInfo, EngineBuild, HardwareProfile, MemoryInfo, PowerInfo

REINSTALL = 'CMAKE_ARGS="{flags}" pip install --force-reinstall --no-cache-dir llama-cpp-python==0.3.36'
BUILD_FLAGS = {"nvidia": "-DGGML_CUDA=on", "amd": "-DGGML_HIP=on", "intel": "-DGGML_VULKAN=on", "apple": "-DGGML_METAL=on"}


# --- collection: one function per source, each returning JSON-able raw values
def collect_cpuinfo() -> str | None:
    p = Path("/proc/cpuinfo")
    return p.read_text(errors="replace") if p.exists() else None


def collect_cpu_cache() -> dict | None:
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    if not base.exists():
        return None
    out = {}
    for index in sorted(base.glob("index*")):
        out[index.name] = {
            f: (index / f).read_text().strip() for f in ("level", "type", "size") if (index / f).exists()
        }
    return out


def collect_sysctl() -> str | None:
    if sys.platform != "darwin":
        return None
    import subprocess

    keys = ["machdep.cpu.brand_string", "hw.memsize", "hw.physicalcpu", "hw.logicalcpu", "hw.l1dcachesize",
            "hw.l2cachesize", "hw.l3cachesize", "hw.optional.neon", "hw.optional.arm.FEAT_DotProd",
            "hw.optional.arm.FEAT_I8MM", "hw.optional.arm.FEAT_FP16", "hw.optional.arm.FEAT_SME"]
    r = subprocess.run(["sysctl", *keys], capture_output=True, text=True, timeout=5)
    return r.stdout


def collect_memory() -> dict:
    import psutil

    vm, sw = psutil.virtual_memory(), psutil.swap_memory()
    return {"total": vm.total, "available": vm.available, "swap_total": sw.total, "swap_free": sw.free}


def collect_cpu_count() -> dict:
    import psutil

    return {"physical": psutil.cpu_count(logical=False), "logical": psutil.cpu_count(logical=True)}


def collect_nvml() -> dict | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None  # no NVIDIA driver: no NVIDIA GPU to use
    try:
        def maybe(fn, *args):
            try:
                return fn(*args)
            except pynvml.NVMLError:
                return None

        driver = maybe(pynvml.nvmlSystemGetDriverVersion)
        devices = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            procs = None
            compute = maybe(pynvml.nvmlDeviceGetComputeRunningProcesses, h)
            graphics = maybe(pynvml.nvmlDeviceGetGraphicsRunningProcesses, h)
            if compute is not None or graphics is not None:
                procs = [{"pid": p.pid, "used": p.usedGpuMemory} for p in (compute or []) + (graphics or [])]
            util = maybe(pynvml.nvmlDeviceGetUtilizationRates, h)
            name = pynvml.nvmlDeviceGetName(h)
            devices.append({
                "name": name.decode() if isinstance(name, bytes) else name,
                "memory_total": mem.total, "memory_free": mem.free, "memory_used": mem.used,
                "processes": procs,
                "cc": maybe(pynvml.nvmlDeviceGetCudaComputeCapability, h),
                "pcie_gen_max": maybe(pynvml.nvmlDeviceGetMaxPcieLinkGeneration, h),
                "pcie_width_max": maybe(pynvml.nvmlDeviceGetMaxPcieLinkWidth, h),
                "power_limit_mw": maybe(pynvml.nvmlDeviceGetPowerManagementLimit, h),
                "power_usage_mw": maybe(pynvml.nvmlDeviceGetPowerUsage, h),
                "bus_width": maybe(pynvml.nvmlDeviceGetMemoryBusWidth, h),
                "mem_clock_max_mhz": maybe(pynvml.nvmlDeviceGetMaxClockInfo, h, pynvml.NVML_CLOCK_MEM),
                "utilization": util.gpu if util is not None else None,
            })
        return {"driver": driver.decode() if isinstance(driver, bytes) else driver, "own_pid": os.getpid(), "devices": devices}
    finally:
        pynvml.nvmlShutdown()


DRM_FILES = ("vendor", "device", "product_name", "mem_info_vram_total", "mem_info_vram_used", "gpu_busy_percent",
             "max_link_speed", "max_link_width")


def collect_drm() -> dict | None:
    base = Path("/sys/class/drm")
    if not base.exists():
        return None
    cards = {}
    for card in base.glob("card[0-9]*"):
        if "-" in card.name:  # connectors (card0-HDMI-A-1), not devices
            continue
        dev = card / "device"
        cards[card.name] = {f: (dev / f).read_text(errors="replace").strip() for f in DRM_FILES if (dev / f).is_file()}
    return cards


def collect_llama() -> dict:
    import llama_cpp

    info = llama_cpp.llama_print_system_info()
    supports = bool(llama_cpp.llama_supports_gpu_offload())
    if supports and llama_cpp.llama_supports_rpc():
        # llama.cpp says yes for its RPC backend alone: this machine's GPUs need a GPU backend
        from tandem.runtime.pool.rpc import local_devices

        supports = any(d["type"] in ("gpu", "igpu") for d in local_devices())
    return {
        "supports_gpu_offload": supports,
        "system_info": info.decode(errors="replace") if isinstance(info, bytes) else str(info),
    }


def collect_power() -> dict | None:
    import psutil

    battery = psutil.sensors_battery() if hasattr(psutil, "sensors_battery") else None
    out = ({"battery": False} if battery is None else
           {"battery": True, "percent": battery.percent, "plugged": battery.power_plugged})
    limit = rapl_power_limit_w()
    if limit is not None:
        out["cpu_power_limit_w"] = limit
    return out


def rapl_power_limit_w(root: Path | None = None) -> float | None:
    """The CPU packages' long-term power limit in watts (RAPL constraint 0 of each package zone,
    summed), or None where powercap is absent or unreadable."""
    from tandem.runtime.hardware.energy import POWERCAP, package_zone_paths, read_int

    total = sum(read_int(zone / "constraint_0_power_limit_uw") or 0 for zone in package_zone_paths(root or POWERCAP))
    return round(total / 1e6, 1) if total else None


def collect_raw(data_dir: Path | None = None) -> dict:
    """Every raw reading of this machine. Failures are recorded under "errors", never raised."""
    raw: dict = {
        "platform": sys.platform,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "node": platform.node(),
        "errors": {},
    }
    sources: dict[str, Callable] = {
        "cpuinfo": collect_cpuinfo, "cpu_cache": collect_cpu_cache, "sysctl": collect_sysctl,
        "cpu_count": collect_cpu_count, "memory": collect_memory, "nvml": collect_nvml, "drm": collect_drm,
        "llama": collect_llama, "power": collect_power,
    }
    for name, fn in sources.items():
        try:
            raw[name] = fn()
        except Exception as err:  # a probe never breaks the profile
            raw[name] = None
            raw["errors"][name] = f"{type(err).__name__}: {err}"
    if data_dir is not None:
        try:
            models = Path(data_dir) / "models"
            where = models if models.exists() else Path(data_dir) if Path(data_dir).exists() else Path.home()
            usage = shutil.disk_usage(where)
            raw["disk"] = {"path": str(where), "free": usage.free, "total": usage.total}
        except OSError as err:
            raw["errors"]["disk"] = str(err)
    return raw


# --- building: pure, from raw readings (also from fixtures of machines we do not have)
def build_profile(raw: dict, bandwidth_gbps: tuple[float, float] | None = None) -> HardwareProfile:
    problems = [f"{name}: {why}" for name, why in sorted((raw.get("errors") or {}).items())]
    cpu = build_cpu(raw)
    mem = raw.get("memory") or {}
    memory = MemoryInfo(
        total_bytes=mem.get("total"),
        available_bytes=mem.get("available"),
        swap_total_bytes=mem.get("swap_total"),
        swap_free_bytes=mem.get("swap_free"),
        read_bandwidth_gbps=bandwidth_gbps[0] if bandwidth_gbps else raw.get("bandwidth_gbps"),
        read_bandwidth_1t_gbps=bandwidth_gbps[1] if bandwidth_gbps else raw.get("bandwidth_1t_gbps"),
    )
    gpus = []
    if raw.get("nvml"):
        gpus += gpus_from_nvml(raw["nvml"])
    drm = raw.get("drm") or {}
    if drm:
        gpus += gpus_from_drm(drm)
        if not raw.get("nvml") and any((f.get("vendor") or "").lower() == "0x10de" for f in drm.values()):
            problems.append("nvml: an NVIDIA GPU is present but NVML did not answer; install or update the NVIDIA driver")
    if raw.get("sysctl"):
        apple = apple_gpu(parse_sysctl(raw["sysctl"]))
        if apple:
            gpus.append(apple)
    gpus = [g.__class__(**{**g.__dict__, "index": i}) for i, g in enumerate(gpus)]
    engine = build_engine(raw.get("llama"), gpus)
    p = raw.get("power") or {}
    power = power_info(p)
    d = raw.get("disk") or {}
    disk = DiskInfo(path=d.get("path"), free_bytes=d.get("free"), total_bytes=d.get("total"))
    from tandem.runtime.hardware.bandwidth import machine_key

    return HardwareProfile(
        platform=raw.get("platform", "unknown"), cpu=cpu, memory=memory, gpus=tuple(gpus),
        engine=engine, power=power, disk=disk, problems=tuple(problems), machine_id=machine_key(raw),
    )


def build_engine(llama: dict | None, gpus: list) -> EngineBuild:
    if not llama:
        return EngineBuild()
    supports = llama.get("supports_gpu_offload")
    advice = None
    usable = [g for g in gpus if g.vendor in BUILD_FLAGS]
    if usable and supports is False:
        g = usable[0]
        advice = (
            f"This llama-cpp-python build cannot use the {g.name}: it runs on the CPU only. "
            f"Reinstall it with GPU support: {REINSTALL.format(flags=BUILD_FLAGS[g.vendor])}"
        )
    return EngineBuild(supports_gpu_offload=supports, system_info=llama.get("system_info"), advice=advice)


def probe(data_dir: Path | None = None, measure_bandwidth: bool = True, remeasure: bool = False,
          engine_kinds: list | None = None, kv_kinds: list = ()) -> HardwareProfile:
    """This machine's profile. The bandwidth is measured once per machine and cached in data_dir;
    engine_kinds (enginebench.Kind): also the rates llama.cpp's CPU kernels stream these at
    (measured once per machine, build and kind), with those timed here before, and on each GPU
    this build can offload to; kv_kinds: those also timed with a filled cache of each KV type."""
    raw = collect_raw(data_dir)
    gbps = None
    if measure_bandwidth:
        from tandem.runtime.hardware.bandwidth import buffer_mib, cached_bandwidth

        try:
            threads = (raw.get("cpu_count") or {}).get("physical") or os.cpu_count() or 1
            first = build_profile(raw)
            size = buffer_mib(first.cpu.l3_bytes, first.memory.available_bytes)
            gbps = cached_bandwidth(data_dir, raw, threads, remeasure=remeasure, size_mib=size)
        except Exception as err:
            raw["errors"]["bandwidth"] = f"{type(err).__name__}: {err}"
    profile = build_profile(raw, gbps)
    if measure_bandwidth and engine_kinds is not None:
        profile = with_engine_rates(profile, data_dir, engine_kinds, remeasure=remeasure, kv_kinds=kv_kinds)
        profile = with_gpu_rates(profile, data_dir, engine_kinds, remeasure=remeasure, kv_kinds=kv_kinds)
    return profile


def _merged(kept: tuple, readings: dict, suffix: str) -> tuple:
    """A profile's (key, value) readings with those of one thread count (`suffix`) replaced."""
    from tandem.runtime.hardware.enginebench import split_suffix

    others = tuple(e for e in kept if split_suffix(e[0])[1] != suffix)
    return tuple(sorted(others + tuple((key + suffix, value) for key, value in readings.items())))


def _threads(profile: HardwareProfile, threads: int | None) -> tuple[int, str]:
    from tandem.runtime.hardware.enginebench import cores_of, thread_suffix

    cores = cores_of(profile)
    threads = threads or cores
    return threads, thread_suffix(threads, cores)


def with_engine_rates(profile: HardwareProfile, data_dir: Path | None, kinds: list,
                      remeasure: bool = False, threads: int | None = None, kv_kinds: list = ()) -> HardwareProfile:
    """The profile with the rates llama.cpp's CPU kernels stream these kinds of layers at
    (enginebench.Kind) and what a filled cache of each KV type costs in the kv_kinds, and those
    measured before, at `threads` (default: every physical core; other counts are kept under
    keys ending in "/tN"). A failure is one of the profile's problems: the numpy reading and the
    fitted constants stand in."""
    from dataclasses import replace

    from tandem.runtime.hardware.enginebench import cached_rates

    threads, suffix = _threads(profile, threads)
    failed: list[str] = []
    try:
        readings = cached_rates(data_dir, profile.machine_id or "unknown", threads, kinds, remeasure=remeasure,
                                kv_kinds=[k for k in kv_kinds if k is not None], failed=failed)
    except Exception as err:  # noqa: BLE001 - llama.cpp could not run at all
        problem = f"engine_rates: {type(err).__name__}: {err}"
        return replace(profile, problems=(*profile.problems, problem))
    rates = _merged(profile.memory.engine_rates, {k: r.rate_gbps for k, r in readings.items()}, suffix)
    costs = _merged(profile.memory.kv_costs, _kv_readings(readings), suffix)
    return replace(profile, memory=replace(profile.memory, engine_rates=rates, kv_costs=costs),
                   problems=(*profile.problems, *(f"engine_rates: {f}" for f in failed)))


def _kv_readings(readings: dict) -> dict:
    """{"KV type@kind": ns} of readings (by kind key) timed with a filled cache."""
    return {f"{t}@{k}": ns for k, r in readings.items() for t, ns in (r.kv_ns or {}).items()}


def offload_target(gpu) -> bool:
    """Whether a plan may put layers on this GPU (a GpuInfo): dedicated memory, or Apple's unified
    memory (an integrated GPU's share of RAM is not planned for)."""
    return not gpu.unified or gpu.vendor == "apple"


def with_gpu_rates(profile: HardwareProfile, data_dir: Path | None, kinds: list,
                   remeasure: bool = False, kv_kinds: list = ()) -> HardwareProfile:
    """The profile with the rates llama.cpp streams these kinds of layers at on each GPU a plan may
    use (offload_target), the hand-off's cost (enginebench.measure_gpu) and what a filled cache of
    each KV type costs there in the kv_kinds, and those timed there before; unchanged where this
    build cannot offload. The GPUs' free memory is read again first (a slice must fit beside what
    other programs hold now). A kind that could not be timed is one of the profile's problems:
    the card's bandwidth and the fitted constants stand in for it."""
    from dataclasses import replace

    from tandem.runtime.hardware.enginebench import cached_gpu_rates, cores_of

    if not any(offload_target(g) for g in profile.gpus) or not profile.engine.supports_gpu_offload:
        return profile
    if kinds or remeasure:
        profile = refresh_memory(profile)
    cpu_rates = dict(profile.memory.engine_rates)
    gpus, problems = [], list(profile.problems)
    for g in profile.gpus:
        if not offload_target(g):
            gpus.append(g)
            continue
        failed: list[str] = []
        try:
            readings = cached_gpu_rates(data_dir, profile.machine_id or "unknown", g, cores_of(profile), kinds,
                                        cpu_rates, remeasure=remeasure, kv_kinds=[k for k in kv_kinds if k],
                                        failed=failed)
        except Exception as err:  # noqa: BLE001 - llama.cpp could not run at all
            failed.append(f"{type(err).__name__}: {err}")
            readings = {}
        problems += [f"gpu_rates ({g.name}): {f}" for f in failed]
        rates = dict(g.engine_rates) | {k: r.rate_gbps for k, r in readings.items()}
        handoffs = [r.handoff_s for r in readings.values() if r.handoff_s is not None]
        kv = dict(g.kv_costs) | _kv_readings(readings)
        gpus.append(replace(g, engine_rates=tuple(sorted(rates.items())), kv_costs=tuple(sorted(kv.items())),
                            handoff_s=statistics.median(handoffs) if handoffs else g.handoff_s))
    return replace(profile, gpus=tuple(gpus), problems=tuple(problems))


def load_profile(path: Path) -> HardwareProfile:
    """A profile saved as JSON (`tandem hardware --json`) or a raw capture (`--raw`)."""
    import json

    data = json.loads(Path(path).read_text())
    return HardwareProfile.from_dict(data) if "gpus" in data else build_profile(data)


def power_info(p: dict) -> PowerInfo:
    """PowerInfo from collect_power's reading."""
    return PowerInfo(on_battery=None if not p else (p.get("battery") and not p.get("plugged")) or False,
                     battery_percent=p.get("percent"), cpu_power_limit_w=p.get("cpu_power_limit_w"))


def read_power() -> PowerInfo | None:
    """The power source now (a laptop is unplugged between loads); None when unreadable."""
    try:
        return power_info(collect_power())
    except Exception:  # noqa: BLE001 - no battery reading
        return None


def refresh_power(profile: HardwareProfile) -> HardwareProfile:
    """The profile with the power source read again; an unreadable one keeps the earlier reading."""
    from dataclasses import replace

    power = read_power()
    return profile if power is None else replace(profile, power=power)


def refresh_memory(profile: HardwareProfile) -> HardwareProfile:
    """The profile with free RAM and each GPU's free memory read again (a few milliseconds):
    other programs and loaded models change them between loads."""
    from dataclasses import replace

    raw = {"memory": None, "nvml": None, "drm": None}
    for name, fn in (("memory", collect_memory), ("nvml", collect_nvml), ("drm", collect_drm)):
        try:
            raw[name] = fn()
        except Exception:  # an unreadable source keeps the earlier reading
            pass
    memory = profile.memory
    if raw["memory"]:
        memory = replace(memory, available_bytes=raw["memory"].get("available"))
    fresh = (gpus_from_nvml(raw["nvml"]) if raw["nvml"] else []) + (gpus_from_drm(raw["drm"]) if raw["drm"] else [])
    gpus = []
    for g in profile.gpus:
        same = next((f for f in fresh if f.name == g.name and f.vendor == g.vendor), None)
        if same is not None:
            fresh.remove(same)
            g = replace(g, memory_free_bytes=same.memory_free_bytes,
                        memory_used_by_others_bytes=same.memory_used_by_others_bytes)
        gpus.append(g)
    return replace(profile, memory=memory, gpus=tuple(gpus))
