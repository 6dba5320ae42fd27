"""GPUs from captured raw values: NVML readings, DRM sysfs files (AMD, Intel), Apple sysctl."""

from __future__ import annotations

from tandem.runtime.hardware.profile import GpuInfo

# GB/s per lane, one direction, after line encoding.
PCIE_LANE_GBPS = {1: 0.25, 2: 0.5, 3: 0.985, 4: 1.969, 5: 3.938, 6: 7.563}
PCI_VENDORS = {"0x10de": "nvidia", "0x1002": "amd", "0x8086": "intel"}
# An AMD device with less dedicated VRAM than this is an APU carve-out: its memory is system RAM.
APU_VRAM_LIMIT = 2 << 30


def pcie_gbps(gen: int | None, width: int | None) -> float | None:
    if not gen or not width or gen not in PCIE_LANE_GBPS:
        return None
    return round(PCIE_LANE_GBPS[gen] * width, 2)


def gpus_from_nvml(raw: dict) -> list[GpuInfo]:
    """raw: {"driver": str, "own_pid": int, "devices": [{name, memory_total, memory_free, memory_used,
    processes: [{pid, used}] | None, cc: [major, minor], pcie_gen_max, pcie_width_max, power_limit_mw,
    power_usage_mw, bus_width, mem_clock_max_mhz, utilization}]} as collected by probe.collect_nvml."""
    gpus = []
    own = raw.get("own_pid")
    for i, d in enumerate(raw.get("devices", [])):
        procs = d.get("processes")
        if procs is not None:
            others = sum(p.get("used") or 0 for p in procs if p.get("pid") != own)
        else:  # the driver does not list processes (containers, WSL): all used memory is theirs
            others = d.get("memory_used")
        cc = d.get("cc")
        gen, width = d.get("pcie_gen_max"), d.get("pcie_width_max")
        gpus.append(
            GpuInfo(
                index=i,
                vendor="nvidia",
                name=d.get("name", "NVIDIA GPU"),
                memory_total_bytes=d.get("memory_total"),
                memory_free_bytes=d.get("memory_free"),
                memory_used_by_others_bytes=others,
                compute_capability=f"{cc[0]}.{cc[1]}" if cc else None,
                pcie_gen=gen,
                pcie_width=width,
                pcie_gbps=pcie_gbps(gen, width),
                power_limit_w=_watts(d.get("power_limit_mw")),
                power_draw_w=_watts(d.get("power_usage_mw")),
                driver=raw.get("driver"),
                memory_bus_width=d.get("bus_width"),
                memory_clock_mhz=d.get("mem_clock_max_mhz"),
                busy_percent=d.get("utilization"),
            )
        )
    return gpus


def _watts(mw) -> float | None:
    return None if mw is None else round(mw / 1000, 1)


def _int(text: str | None) -> int | None:
    try:
        return int(str(text).strip(), 0)
    except (TypeError, ValueError):
        return None


def _link(speed: str | None) -> int | None:
    """'16.0 GT/s PCIe' -> gen 4."""
    gt = {"2.5": 1, "5.0": 2, "8.0": 3, "16.0": 4, "32.0": 5, "64.0": 6}
    return gt.get((speed or "").split(" ")[0])


def gpus_from_drm(cards: dict[str, dict[str, str]], skip_vendors: tuple[str, ...] = ("nvidia",)) -> list[GpuInfo]:
    """cards: {"card0": {filename: content}} read from /sys/class/drm/cardN/device.

    AMD: mem_info_vram_total/used, gpu_busy_percent, product_name; an APU (small VRAM carve-out)
    and Intel integrated graphics share system RAM and are marked unified. NVIDIA cards are
    left to NVML (skip_vendors).
    """
    gpus = []
    for card in sorted(cards, key=lambda c: _int(c.removeprefix("card")) or 0):
        files = cards[card]
        vendor = PCI_VENDORS.get((files.get("vendor") or "").strip().lower())
        if vendor is None or vendor in skip_vendors:
            continue
        total, used = _int(files.get("mem_info_vram_total")), _int(files.get("mem_info_vram_used"))
        unified = vendor == "intel" or (vendor == "amd" and (total or 0) < APU_VRAM_LIMIT)
        gen, width = _link(files.get("max_link_speed")), _int(files.get("max_link_width"))
        device = (files.get("device") or "").strip()
        label = "Intel integrated graphics" if vendor == "intel" else f"{vendor.upper()} GPU"
        name = (files.get("product_name") or "").strip() or (f"{label} ({device})" if device else label)
        gpus.append(
            GpuInfo(
                index=len(gpus),
                vendor=vendor,
                name=name,
                memory_total_bytes=total,
                memory_free_bytes=None if total is None or used is None else total - used,
                memory_used_by_others_bytes=used,
                unified=unified,
                pcie_gen=None if unified else gen,
                pcie_width=None if unified else width,
                pcie_gbps=None if unified else pcie_gbps(gen, width),
                busy_percent=_int(files.get("gpu_busy_percent")),
            )
        )
    return gpus


def apple_gpu(sysctl: dict[str, str]) -> GpuInfo | None:
    """Apple Silicon: one GPU sharing unified memory; Metal lets it use about 2/3 to 3/4 of RAM."""
    brand = sysctl.get("machdep.cpu.brand_string", "")
    if not brand.startswith("Apple"):
        return None
    ram = _int(sysctl.get("hw.memsize"))
    share = None
    if ram:
        share = int(ram * (2 / 3 if ram <= 36 << 30 else 3 / 4))  # Metal's recommended working set
    return GpuInfo(index=0, vendor="apple", name=f"{brand} GPU", memory_total_bytes=share, unified=True)
