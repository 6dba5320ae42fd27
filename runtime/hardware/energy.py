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
import time
from dataclasses import dataclass
from pathlib import Path

POWERCAP = Path("/sys/class/powercap")


@dataclass(frozen=True)
class Reading:
    """The counters at one instant: package zone -> (microjoules, wrap range), GPU index -> millijoules."""

    rapl: tuple[tuple[str, int, int], ...] = ()
    nvml: tuple[tuple[int, int], ...] = ()
    at: float | None = None  # the meter's clock (time.monotonic()) at the reading


# More than this per package or GPU between two readings is no reading (a counter reset, or a wrap
# counted wrongly); a server GPU peaks near 1 kW, a desktop package near 400 W.
MAX_WATTS = 1500.0


@dataclass(frozen=True)
class Energy:
    """Joules between two readings, per side (None: that side is not counted here)."""

    cpu_j: float | None
    gpu_j: float | None

    @property
    def total_j(self) -> float | None:
        parts = [j for j in (self.cpu_j, self.gpu_j) if j is not None]
        return sum(parts) if parts else None


def package_zone_paths(root: Path = POWERCAP) -> list[Path]:
    """The CPU packages' RAPL zones: top-level intel-rapl:N zones named package-N. Not their
    sub-zones (core, uncore, dram) nor the platform zone (psys, on laptops: it includes the
    package), which would count joules twice."""
    zones = []
    for zone in sorted(root.glob("intel-rapl:*")) if root.is_dir() else []:
        if zone.name.count(":") != 1:
            continue
        try:
            name = (zone / "name").read_text().strip()
        except OSError:
            continue
        if name.startswith("package"):
            zones.append(zone)
    return zones


def package_zones(root: Path = POWERCAP) -> list[Path]:
    """The package zones whose energy counter this process may read (often root only)."""
    return [z for z in package_zone_paths(root) if read_int(z / "energy_uj") is not None]


def read_int(path: Path) -> int | None:
    """An integer sysfs file, None when unreadable."""
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


class EnergyMeter:
    """Reads the counters this machine lets this process read (found once)."""

    def __init__(self, powercap: Path = POWERCAP, nvml: bool = True, clock=time.monotonic):
        self.clock = clock
        self.zones = package_zones(powercap)
        self.ranges = {str(z): read_int(z / "max_energy_range_uj") or 0 for z in self.zones}
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
            uj = read_int(z / "energy_uj")
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
        return Reading(tuple(rapl), tuple(nvml), self.clock())


def between(a: Reading, b: Reading) -> Energy:
    """Joules from reading a to reading b, counting a RAPL counter's wrap-around once (read more
    often than a counter wraps: EnergyTrack). A side any of whose counters is missing from either
    reading, went back without a known range, or moved implausibly far is None (not partial)."""
    limit = MAX_WATTS * max(b.at - a.at, 1e-3) if a.at is not None and b.at is not None else None

    def plausible(joules: float) -> bool:
        return limit is None or joules <= limit

    cpu: float | None = None
    before = {zone: uj for zone, uj, _ in a.rapl}
    after = {zone: (uj, wrap) for zone, uj, wrap in b.rapl}
    if before and set(before) == set(after):
        cpu = 0.0
        for zone, (uj, wrap) in after.items():
            delta = uj - before[zone]
            if delta < 0 and wrap:
                delta += wrap
            if delta < 0 or not plausible(delta / 1e6):
                cpu = None
                break
            cpu += delta / 1e6
    gpu: float | None = None
    start, end = dict(a.nvml), dict(b.nvml)
    if start and set(start) == set(end):
        gpu = 0.0
        for index, mj in end.items():
            delta = (mj - start[index]) / 1e3
            if delta < 0 or not plausible(delta):
                gpu = None
                break
            gpu += delta
    return Energy(cpu, gpu)


class EnergyTrack:
    """A reply's joules, read at its start and then at most every `every` seconds while it runs
    (sample()), so that a RAPL counter cannot wrap twice unseen (AMD's wraps after about 65 kJ,
    four minutes at 250 W); a side that fails one interval is None for the reply."""

    def __init__(self, meter: "EnergyMeter", every: float = 10.0):
        self.meter, self.every = meter, every
        self.last = meter.read() if meter.available else None
        self.cpu: float | None = 0.0
        self.gpu: float | None = 0.0

    def sample(self, force: bool = False) -> None:
        if self.last is None:
            return
        if not force and self.meter.clock() - self.last.at < self.every:
            return
        now = self.meter.read()
        used = between(self.last, now)
        self.cpu = None if self.cpu is None or used.cpu_j is None else self.cpu + used.cpu_j
        self.gpu = None if self.gpu is None or used.gpu_j is None else self.gpu + used.gpu_j
        self.last = now

    def fields(self) -> dict:
        """The ReplyStats fields (energy_cpu_j, energy_gpu_j), empty when nothing is counted here."""
        if self.last is None:
            return {}
        self.sample(force=True)  # a side without counters comes out None (between)
        return {"energy_cpu_j": self.cpu, "energy_gpu_j": self.gpu}


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
