"""CPU facts from captured text: /proc/cpuinfo, sysfs cache entries, macOS sysctl output."""

from __future__ import annotations

from tandem.runtime.hardware.profile import CpuInfo

# cpuinfo flag -> the name Tandem shows; only what changes llama.cpp's kernels.
X86_FEATURES = {
    "avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c", "avx512f": "avx512f",
    "avx512_vnni": "avx512_vnni", "avx512vnni": "avx512_vnni", "avx512_bf16": "avx512_bf16",
    "avx_vnni": "avx_vnni", "amx_tile": "amx", "amx_int8": "amx_int8", "amx_bf16": "amx_bf16",
}
ARM_FEATURES = {"asimd": "neon", "asimddp": "dotprod", "sve": "sve", "sve2": "sve2", "i8mm": "i8mm", "fphp": "fp16"}
SYSCTL_ARM_FEATURES = {
    "hw.optional.neon": "neon", "hw.optional.arm.FEAT_DotProd": "dotprod", "hw.optional.arm.FEAT_I8MM": "i8mm",
    "hw.optional.arm.FEAT_FP16": "fp16", "hw.optional.arm.FEAT_SME": "sme",
}


def parse_size(text: str) -> int | None:
    """'32K' -> 32768, '1024 KB' -> 1048576, '8M' -> 8388608, '512' -> 512."""
    t = text.strip().upper().replace("IB", "").replace("B", "").replace(" ", "")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    digits = t[:-1] if t[-1:] in "KMG" else t
    try:
        return int(float(digits) * mult)
    except ValueError:
        return None


def parse_cpuinfo(text: str) -> dict:
    """brand, physical/logical cores and features from /proc/cpuinfo (x86 or ARM)."""
    blocks = [b for b in text.strip().split("\n\n") if b.strip()]
    processors = []
    for block in blocks:
        entry = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                entry[key.strip().lower()] = value.strip()
        if "processor" in entry:
            processors.append(entry)
    if not processors:
        return {}
    first = processors[0]
    flags = set((first.get("flags") or first.get("features") or "").split())
    table = X86_FEATURES if "flags" in first else ARM_FEATURES
    features = sorted({name for flag, name in table.items() if flag in flags})
    cores = {(p.get("physical id"), p.get("core id")) for p in processors if "core id" in p}
    return {
        "brand": first.get("model name") or first.get("hardware") or first.get("cpu model"),
        "logical_cores": len(processors),
        "physical_cores": len(cores) or None,
        "features": tuple(features),
    }


def parse_cache(entries: dict[str, dict[str, str]]) -> dict:
    """L1d/L2/L3 sizes from sysfs cpu0/cache/index*/{level,type,size}."""
    out = {}
    for entry in entries.values():
        level, kind, size = entry.get("level"), entry.get("type", ""), parse_size(entry.get("size", ""))
        if size is None:
            continue
        if level == "1" and kind == "Data":
            out["l1d_bytes"] = size
        elif level == "2":
            out["l2_bytes"] = size
        elif level == "3":
            out["l3_bytes"] = size
    return out


def parse_sysctl(text: str) -> dict[str, str]:
    """'key: value' lines (sysctl output) into a dict."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def cpu_from_sysctl(values: dict[str, str]) -> dict:
    def num(key):
        try:
            return int(values[key])
        except (KeyError, ValueError):
            return None

    return {
        "brand": values.get("machdep.cpu.brand_string"),
        "physical_cores": num("hw.physicalcpu"),
        "logical_cores": num("hw.logicalcpu"),
        "features": tuple(sorted(name for key, name in SYSCTL_ARM_FEATURES.items() if values.get(key) == "1")),
        "l1d_bytes": num("hw.l1dcachesize"),
        "l2_bytes": num("hw.l2cachesize"),
        "l3_bytes": num("hw.l3cachesize"),
    }


def build_cpu(raw: dict) -> CpuInfo:
    """CpuInfo from a raw capture; psutil's counts fill what the text did not give."""
    facts: dict = {}
    if raw.get("cpuinfo"):
        facts.update(parse_cpuinfo(raw["cpuinfo"]))
    if raw.get("cpu_cache"):
        facts.update(parse_cache(raw["cpu_cache"]))
    if raw.get("sysctl"):
        facts.update({k: v for k, v in cpu_from_sysctl(parse_sysctl(raw["sysctl"])).items() if v not in (None, ())})
    counts = raw.get("cpu_count") or {}
    return CpuInfo(
        brand=facts.get("brand") or raw.get("processor") or None,
        arch=raw.get("machine"),
        physical_cores=counts.get("physical") or facts.get("physical_cores"),
        logical_cores=counts.get("logical") or facts.get("logical_cores"),
        features=tuple(facts.get("features", ())),
        l1d_bytes=facts.get("l1d_bytes"),
        l2_bytes=facts.get("l2_bytes"),
        l3_bytes=facts.get("l3_bytes"),
    )
