"""What this machine has. The full probe (GPUs, bandwidth) builds on these helpers."""

from __future__ import annotations

import os


def physical_cores() -> int:
    """Physical CPU cores: llama.cpp decodes fastest with one thread per physical core.

    Hyperthreads share a core's load/store units, and decode is memory-bound, so counting them
    (or taking llama-cpp-python's default of cpu_count // 2) leaves speed on the table.
    """
    try:
        import psutil

        cores = psutil.cpu_count(logical=False)
    except Exception:  # psutil missing or unable to read the topology
        cores = None
    return max(1, cores or os.cpu_count() or 1)


from tandem.runtime.hardware.probe import build_profile, collect_raw, load_profile, probe  # noqa: E402
from tandem.runtime.hardware.profile import CpuInfo, GpuInfo, HardwareProfile, MemoryInfo  # noqa: E402

__all__ = ["CpuInfo", "GpuInfo", "HardwareProfile", "MemoryInfo", "build_profile", "collect_raw", "load_profile", "physical_cores", "probe"]
