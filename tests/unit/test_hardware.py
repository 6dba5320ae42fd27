"""The hardware profile built from captured raw readings of machines, including ones we lack."""

import json
from pathlib import Path

import pytest

from tandem.runtime.hardware import HardwareProfile, build_profile
from tandem.runtime.hardware.bandwidth import cached_bandwidth
from tandem.runtime.hardware.cpu import parse_size
from tandem.runtime.hardware.gpu import pcie_gbps

FIXTURES = Path(__file__).parent.parent / "fixtures" / "hardware"
GiB = 1 << 30
MiB = 1 << 20


def load(name: str) -> HardwareProfile:
    return build_profile(json.loads((FIXTURES / f"{name}.json").read_text()))


def test_rtx3060_desktop():
    p = load("rtx3060-desktop")
    assert p.cpu.brand == "12th Gen Intel(R) Core(TM) i5-12400F"
    assert (p.cpu.physical_cores, p.cpu.logical_cores) == (6, 12)
    assert "avx2" in p.cpu.features and "avx_vnni" in p.cpu.features and "avx512f" not in p.cpu.features
    assert (p.cpu.l1d_bytes, p.cpu.l2_bytes, p.cpu.l3_bytes) == (48 * 1024, 1280 * 1024, 18 * MiB)
    [g] = p.gpus
    assert (g.vendor, g.name, g.memory_total_bytes) == ("nvidia", "NVIDIA GeForce RTX 3060", 12 * GiB)
    assert g.memory_used_by_others_bytes == 412 * MiB
    assert g.memory_free_bytes == 12 * GiB - 412 * MiB
    assert (g.compute_capability, g.pcie_gen, g.pcie_width, g.pcie_gbps) == ("8.6", 4, 16, 31.5)
    assert (g.power_limit_w, g.power_draw_w, g.driver) == (170.0, 18.0, "550.54.14")
    assert p.engine.supports_gpu_offload and p.engine.advice is None
    assert p.dedicated_vram_bytes == 12 * GiB
    assert p.power.on_battery is False and p.problems == ()


def test_laptop_with_4gb_gpu_counts_only_other_processes():
    p = load("laptop-4gb-gpu")
    g, igpu = p.gpus  # the NVIDIA GPU from NVML, the Intel iGPU from DRM (sharing RAM)
    assert (igpu.vendor, igpu.unified) == ("intel", True)
    assert p.dedicated_vram_bytes == 4 * GiB
    assert g.name == "NVIDIA GeForce RTX 3050 Laptop GPU" and g.memory_total_bytes == 4 * GiB
    assert g.memory_used_by_others_bytes == 512 * MiB  # Tandem's own 88 MiB is not "others"
    assert g.pcie_gbps == 15.75
    assert p.power.on_battery is True and p.power.battery_percent == 64.0


def test_laptop_cpu_only_8gb_with_integrated_graphics_not_counted_as_memory():
    p = load("cpu-only-8gb-laptop")
    [g] = p.gpus
    assert (g.vendor, g.unified, g.memory_total_bytes) == ("intel", True, None)
    assert g.name == "Intel integrated graphics (0x5917)"
    assert p.dedicated_vram_bytes == 0
    assert p.memory.total_bytes == 8 * GiB
    assert (p.cpu.physical_cores, p.cpu.logical_cores) == (4, 8)
    assert p.engine.supports_gpu_offload is False
    assert p.engine.advice and "GGML_VULKAN" in p.engine.advice


def test_two_different_nvidia_gpus():
    p = load("two-nvidia-gpus")
    assert [g.index for g in p.gpus] == [0, 1]
    assert [g.name for g in p.gpus] == ["NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 3060"]
    assert [g.compute_capability for g in p.gpus] == ["8.9", "8.6"]
    assert p.gpus[1].pcie_width == 4 and p.gpus[1].pcie_gbps == 7.88
    # no process list from the driver: everything in use counts as used by others
    assert p.gpus[1].memory_used_by_others_bytes == 250 * MiB
    assert p.dedicated_vram_bytes == 36 * GiB
    assert "avx512f" in p.cpu.features


def test_amd_card_through_sysfs_and_a_cpu_only_build():
    p = load("amd-rx7900xtx")
    [g] = p.gpus
    assert (g.vendor, g.name, g.unified) == ("amd", "AMD Radeon RX 7900 XTX", False)
    assert g.memory_total_bytes == 24 * GiB and g.memory_free_bytes == 24 * GiB - 900 * MiB
    assert (g.pcie_gen, g.pcie_width, g.busy_percent) == (4, 16, 2)
    assert "GGML_HIP=on" in p.engine.advice and "pip install" in p.engine.advice


def test_apple_m2_unified_memory():
    p = load("apple-m2-16gb")
    assert p.platform == "darwin" and p.cpu.brand == "Apple M2"
    assert set(p.cpu.features) == {"neon", "dotprod", "fp16"}
    [g] = p.gpus
    assert (g.vendor, g.unified) == ("apple", True)
    assert g.memory_total_bytes == int(16 * GiB * 2 / 3)
    assert p.dedicated_vram_bytes == 0  # not counted twice with system RAM
    assert p.power.on_battery is False  # plugged in
    assert p.engine.advice is None


def test_gpu_present_but_build_cannot_offload_says_what_to_run():
    p = load("nvidia-with-cpu-only-build")
    assert p.gpus[0].memory_used_by_others_bytes == 0  # process list empty: nobody else
    assert p.engine.advice == (
        "This llama-cpp-python build cannot use the NVIDIA GeForce RTX 2060: it runs on the CPU only. "
        'Reinstall it with GPU support: CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall '
        "--no-cache-dir llama-cpp-python==0.3.36"
    )
    assert p.disk.free_bytes is None


def test_failing_probes_give_a_partial_profile_with_reasons():
    p = load("arm-linux-probe-failures")
    assert p.cpu.arch == "aarch64" and p.cpu.logical_cores == 4
    assert set(p.cpu.features) == {"neon", "dotprod", "fp16"}
    assert p.memory.total_bytes is None and p.engine.supports_gpu_offload is None
    assert any(s.startswith("memory: PermissionError") for s in p.problems)
    assert any(s.startswith("llama: ImportError") for s in p.problems)
    assert any("NVML did not answer" in s for s in p.problems)


def test_dev_vm_capture():
    p = load("dev-vm-epyc-2core")
    assert p.cpu.physical_cores == 2 and p.gpus == () and p.engine.supports_gpu_offload is False


@pytest.mark.parametrize("name", sorted(f.stem for f in FIXTURES.glob("*.json")))
def test_profiles_round_trip_through_json(name):
    p = load(name)
    assert HardwareProfile.from_json(p.to_json()) == p


def test_sizes_and_links():
    assert parse_size("32K") == 32768 and parse_size("1024 KB") == 1 << 20 and parse_size("8M") == 8 << 20
    assert parse_size("junk") is None
    assert pcie_gbps(3, 16) == 15.76 and pcie_gbps(None, 16) is None and pcie_gbps(9, 1) is None


def test_bandwidth_is_measured_once_and_cached(tmp_path):
    raw = {"node": "x", "processor": "p", "cpu_count": {"physical": 1}, "memory": {"total": 8 * GiB}}
    all_cores, one = cached_bandwidth(tmp_path, raw, threads=2)
    assert all_cores > 0.1 and one > 0.1
    cache = json.loads((tmp_path / "hardware-cache.json").read_text())
    [entry] = cache.values()
    entry["read_bandwidth_gbps"] = 123.0  # proves the second call reads the cache
    (tmp_path / "hardware-cache.json").write_text(json.dumps({k: entry for k in cache}))
    assert cached_bandwidth(tmp_path, raw, threads=2) == (123.0, one)
    (tmp_path / "hardware-cache.json").write_text("{damaged")
    assert cached_bandwidth(tmp_path, raw, threads=2)[0] > 0.1


def test_the_bandwidth_buffer_outgrows_the_last_level_cache():
    from tandem.runtime.hardware.bandwidth import buffer_mib

    assert buffer_mib(32 << 20) == 192  # small caches: the default buffer is already 6x larger
    assert buffer_mib(300 << 20) == 1200  # a server's 300 MiB L3: reading 192 MiB measured the cache
    assert buffer_mib(300 << 20, available_bytes=4 * GiB) == 512  # never more than an eighth of free memory
    assert buffer_mib(None, available_bytes=GiB) == 192
