"""HardwareProfile: what this machine has, as a frozen value that round-trips through JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields


@dataclass(frozen=True)
class CpuInfo:
    brand: str | None = None
    arch: str | None = None  # x86_64, arm64 ...
    physical_cores: int | None = None
    logical_cores: int | None = None
    features: tuple[str, ...] = ()  # those that matter to llama.cpp: avx2, avx512f, neon, dotprod ...
    l1d_bytes: int | None = None
    l2_bytes: int | None = None
    l3_bytes: int | None = None


@dataclass(frozen=True)
class MemoryInfo:
    total_bytes: int | None = None
    available_bytes: int | None = None
    swap_total_bytes: int | None = None
    swap_free_bytes: int | None = None
    read_bandwidth_gbps: float | None = None  # measured, all physical cores reading
    read_bandwidth_1t_gbps: float | None = None  # measured, one thread reading
    # (kind, GB/s) llama.cpp's CPU kernels stream at all physical cores, from decodes it timed
    # (hardware.enginebench; a kind is "TYPE@n_embd x n_ff x heads x kv heads x layers"); the speed
    # model prefers them to the numpy reading.
    engine_rates: tuple[tuple[str, float], ...] = ()

    # ("KV type@kind", ns) a decoded token costs llama.cpp's CPU per cached position and layer with
    # a filled cache of that type, timed in that kind of layers (hardware.enginebench).
    # Both: at all physical cores; a key ending in "/tN" was timed with N threads.
    kv_costs: tuple[tuple[str, float], ...] = ()

    def engine_rate(self, key: str) -> float | None:
        return next((gbps for k, gbps in self.engine_rates if k == key), None)


@dataclass(frozen=True)
class GpuInfo:
    index: int
    vendor: str  # nvidia, amd, intel, apple
    name: str
    memory_total_bytes: int | None = None
    memory_free_bytes: int | None = None
    memory_used_by_others_bytes: int | None = None
    unified: bool = False  # shares system RAM (Apple Silicon, integrated GPUs): not extra memory
    compute_capability: str | None = None
    pcie_gen: int | None = None
    pcie_width: int | None = None
    pcie_gbps: float | None = None  # host link bandwidth, one direction
    power_limit_w: float | None = None
    power_draw_w: float | None = None
    driver: str | None = None
    memory_bus_width: int | None = None
    memory_clock_mhz: int | None = None
    busy_percent: int | None = None
    # (kind, GB/s) llama.cpp's kernels stream on this GPU, from slices it timed there
    # (hardware.enginebench); the speed model prefers them to the card's bandwidth
    engine_rates: tuple[tuple[str, float], ...] = ()
    handoff_s: float | None = None  # what a token's crossings between the CPU and this GPU add, timed
    # ("KV type@kind", ns) a decoded token costs this GPU per cached position and layer, as MemoryInfo's
    kv_costs: tuple[tuple[str, float], ...] = ()

    def engine_rate(self, key: str) -> float | None:
        return next((gbps for k, gbps in self.engine_rates if k == key), None)


@dataclass(frozen=True)
class EngineBuild:
    supports_gpu_offload: bool | None = None
    system_info: str | None = None
    advice: str | None = None  # what to run when a GPU is present but this build cannot use it


@dataclass(frozen=True)
class PowerInfo:
    on_battery: bool | None = None
    battery_percent: float | None = None
    # the CPU packages' long-term power limit (RAPL's constraint 0, summed over packages), where readable
    cpu_power_limit_w: float | None = None


@dataclass(frozen=True)
class DiskInfo:
    path: str | None = None
    free_bytes: int | None = None
    total_bytes: int | None = None


@dataclass(frozen=True)
class HardwareProfile:
    platform: str
    cpu: CpuInfo = CpuInfo()
    memory: MemoryInfo = MemoryInfo()
    gpus: tuple[GpuInfo, ...] = ()
    engine: EngineBuild = EngineBuild()
    power: PowerInfo = PowerInfo()
    disk: DiskInfo = DiskInfo()
    problems: tuple[str, ...] = field(default=())  # what could not be read, and why
    machine_id: str | None = None  # stable per machine: keys the bandwidth cache and speed calibration

    @property
    def dedicated_vram_bytes(self) -> int:
        """VRAM that adds to system RAM (unified and integrated GPUs share RAM: not counted)."""
        return sum(g.memory_total_bytes or 0 for g in self.gpus if not g.unified)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    @classmethod
    def from_dict(cls, d: dict) -> "HardwareProfile":
        return cls(
            platform=d["platform"],
            cpu=_build(CpuInfo, d.get("cpu", {})),
            memory=_build(MemoryInfo, d.get("memory", {})),
            gpus=tuple(_build(GpuInfo, g) for g in d.get("gpus", ())),
            engine=_build(EngineBuild, d.get("engine", {})),
            power=_build(PowerInfo, d.get("power", {})),
            disk=_build(DiskInfo, d.get("disk", {})),
            problems=tuple(d.get("problems", ())),
            machine_id=d.get("machine_id"),
        )

    @classmethod
    def from_json(cls, text: str) -> "HardwareProfile":
        return cls.from_dict(json.loads(text))


def _build(kind, values: dict):
    known = {f.name for f in fields(kind)}
    clean = {k: _frozen(v) for k, v in values.items() if k in known}
    return kind(**clean)


def _frozen(v):
    return tuple(_frozen(x) for x in v) if isinstance(v, list) else v
