"""The energy a reply used, where the hardware counts it.

- The CPU: Linux's powercap interface to RAPL, one cumulative counter per package
  (/sys/class/powercap/intel-rapl:N/energy_uj, microjoules, wrapping at max_energy_range_uj; AMD's
  Zen packages appear under the same name). Since 2020 most kernels let only root read it
  (CVE-2020-8694): then there is no CPU figure.
- NVIDIA GPUs: NVML's total energy counter (millijoules since the driver loaded; Volta and later).

The counters cover the whole package and the whole GPU: a reply's figure includes whatever else
ran meanwhile, and two replies at once count the same joules twice. A counter that cannot be read
is left out, never guessed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

POWERCAP = Path("/sys/class/powercap")


@dataclass(frozen=True)
class Reading:
    """The counters at one instant: package zone -> (microjoules, wrap range), GPU index -> millijoules."""

    rapl: tuple[tuple[str, int, int], ...] = ()
    nvml: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class Energy:
    """Joules between two readings, per side (None: that side is not counted here)."""

    cpu_j: float | None
    gpu_j: float | None

    @property
    def total_j(self) -> float | None:
        parts = [j for j in (self.cpu_j, self.gpu_j) if j is not None]
        return sum(parts) if parts else None


def package_zones(root: Path = POWERCAP) -> list[Path]:
    """The readable package counters: intel-rapl:N, not its sub-zones (core, uncore, dram: parts
    of the package or outside it, which would count twice)."""
    zones = []
    for zone in sorted(root.glob("intel-rapl:*")) if root.is_dir() else []:
        if zone.name.count(":") != 1:
            continue
        try:
            int((zone / "energy_uj").read_text())
            zones.append(zone)
        except (OSError, ValueError):
            continue  # root-only (the usual case) or not a counter
    return zones


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


class EnergyMeter:
    """Reads the counters this machine lets this process read (found once)."""

    def __init__(self, powercap: Path = POWERCAP, nvml: bool = True):
        self.zones = package_zones(powercap)
        self.ranges = {str(z): _read_int(z / "max_energy_range_uj") or 0 for z in self.zones}
        self._nvml: list[tuple[int, object]] = []
        self._lock = threading.Lock()
        if nvml:
            self._nvml = _nvml_counters()

    @property
    def sources(self) -> list[str]:
        """What is counted, in words."""
        return ([f"CPU package {z.name.split(':')[1]} (RAPL)" for z in self.zones]
                + [f"GPU{i} (NVML)" for i, _ in self._nvml])

    @property
    def available(self) -> bool:
        return bool(self.zones or self._nvml)

    def read(self) -> Reading:
        rapl = []
        for z in self.zones:
            uj = _read_int(z / "energy_uj")
            if uj is not None:
                rapl.append((str(z), uj, self.ranges.get(str(z), 0)))
        nvml = []
        with self._lock:
            for index, handle in self._nvml:
                try:
                    import pynvml

                    nvml.append((index, int(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))))
                except Exception:  # noqa: BLE001 - a GPU that stops answering is left out
                    continue
        return Reading(tuple(rapl), tuple(nvml))


def between(a: Reading, b: Reading) -> Energy:
    """Joules from reading a to reading b, counting a RAPL counter's wrap-around once; a counter
    missing from either reading is left out."""
    before = {zone: (uj, wrap) for zone, uj, wrap in a.rapl}
    cpu = None
    for zone, uj, wrap in b.rapl:
        if zone not in before:
            continue
        delta = uj - before[zone][0]
        if delta < 0:
            if not wrap:
                continue  # a counter that went back without a known range: not counted
            delta += wrap
        cpu = (cpu or 0.0) + delta / 1e6
    start = dict(a.nvml)
    gpu = None
    for index, mj in b.nvml:
        if index in start and mj >= start[index]:
            gpu = (gpu or 0.0) + (mj - start[index]) / 1e3
    return Energy(cpu, gpu)


def _nvml_counters() -> list[tuple[int, object]]:
    """NVIDIA GPUs whose energy counter answers."""
    try:
        import pynvml

        pynvml.nvmlInit()
        found = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            try:
                pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            except Exception:  # noqa: BLE001 - older than Volta, or not allowed
                continue
            found.append((i, handle))
        return found
    except Exception:  # noqa: BLE001 - no NVIDIA driver: nothing to count
        return []


_METER: EnergyMeter | None = None
_METER_LOCK = threading.Lock()


def meter() -> EnergyMeter:
    """This process's meter (the counters are looked for once)."""
    global _METER
    with _METER_LOCK:
        if _METER is None:
            _METER = EnergyMeter()
        return _METER
