"""Host memory read bandwidth: measured once per machine (well under a second), then cached."""

from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

CACHE_FILE = "hardware-cache.json"


MIN_BUFFER_MIB = 192


def buffer_mib(l3_bytes: int | None, available_bytes: int | None = None) -> int:
    """How much to read: four times the last-level cache (a buffer that fits in it measures the
    cache: 101 GB/s from 192 MiB on a host with a 300 MiB L3, where llama.cpp streams 54), at
    least 192 MiB, at most an eighth of the free memory."""
    want = max(MIN_BUFFER_MIB, (4 * (l3_bytes or 0)) >> 20)
    if available_bytes:
        want = min(want, max(MIN_BUFFER_MIB, (available_bytes // 8) >> 20))
    return want


def measure_read_bandwidth(threads: int, size_mib: int = MIN_BUFFER_MIB, passes: int = 5) -> float:
    """GB/s reading a buffer larger than the caches, one slice per thread (numpy releases the GIL).

    np.max streams the data with the least arithmetic per byte of numpy's reductions; the best of
    a few passes is kept, the shared machine's noise only ever lowering a pass."""
    data = np.ones(size_mib * (1 << 20) // 8, dtype=np.float64)
    slices = np.array_split(data, max(1, threads))
    best = 0.0
    with ThreadPoolExecutor(max_workers=len(slices)) as pool:
        list(pool.map(np.max, slices))  # warm: pages faulted in, threads started
        for _ in range(passes):
            t0 = time.perf_counter()
            list(pool.map(np.max, slices))
            best = max(best, data.nbytes / (time.perf_counter() - t0) / 1e9)
    return round(best, 2)


def machine_key(raw: dict) -> str:
    """What identifies this machine's memory system: CPU, core counts, RAM size, host name."""
    parts = [
        str(raw.get("node")),
        str(raw.get("processor") or ""),
        json.dumps(raw.get("cpu_count"), sort_keys=True),
        str((raw.get("memory") or {}).get("total", 0) >> 30),
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def cached_bandwidth(data_dir: Path | None, raw: dict, threads: int, remeasure: bool = False,
                     size_mib: int = MIN_BUFFER_MIB) -> tuple[float, float]:
    """(GB/s with one reader per physical core, GB/s with one reader), measured once per machine
    (again when an earlier measurement read a smaller buffer than `size_mib`)."""
    cache_path = data_dir / CACHE_FILE if data_dir else None
    key = machine_key(raw)
    cache = read_cache(cache_path)
    entry = cache.get(key) or {}
    values = entry.get("read_bandwidth_gbps"), entry.get("read_bandwidth_1t_gbps")
    if not remeasure and all(isinstance(v, (int, float)) for v in values) and entry.get("buffer_mib", 0) >= size_mib:
        return float(values[0]), float(values[1])
    all_cores = measure_read_bandwidth(threads, size_mib)
    one = measure_read_bandwidth(1, size_mib) if threads > 1 else all_cores
    if cache_path:
        cache[key] = {"read_bandwidth_gbps": all_cores, "read_bandwidth_1t_gbps": one, "threads": threads,
                      "buffer_mib": size_mib,
                      "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_cache(cache_path, cache)
    return all_cores, one


def read_cache(path: Path | None) -> dict:
    """A JSON cache of measurements: {} when absent or damaged (then measured again)."""
    if path is None or not path.exists():
        return {}
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def write_cache(path: Path, cache: dict) -> None:
    """Replace the cache file whole (a reader never sees half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cache, indent=1))
    tmp.replace(path)
