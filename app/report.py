"""Plain-text reports for the command line: the hardware profile and a model's inspection."""

from __future__ import annotations

from tandem.runtime.hardware import HardwareProfile
from tandem.runtime.model_info import ModelInfo
from tandem.runtime.planner import Plan


def size(n: int | None) -> str:
    """Bytes in the largest binary unit that keeps the number at 1 or more: 32 KiB, 98.4 MiB, 12.0 GiB."""
    if n is None:
        return "?"
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            value = n / (1 << shift)
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} B"


def _threads_label(key: str) -> tuple[str, str]:
    """"Q4_1@576x1536x9x3x30/t1" -> ("Q4_1@576x1536x9x3x30", " with 1 thread"): a reading timed
    at another thread count than every physical core."""
    from tandem.runtime.hardware.enginebench import split_suffix

    base, suffix = split_suffix(key)
    count = suffix[2:]
    return base, (f" with {count} thread{'' if count == '1' else 's'}" if count else "")


def engine_text(p: HardwareProfile) -> str:
    """The rates llama.cpp's CPU kernels streamed each weight type at, as timed on this machine."""
    rates = p.memory.engine_rates
    if not rates:
        return "not timed yet (each weight type is timed when the first model holding it loads)"
    shown = (f"{kind_label(base)} {gbps} GB/s{threads}" for base, threads, gbps in
             ((*_threads_label(k), gbps) for k, gbps in rates))
    return ", ".join(shown) + " (timed on this machine, all cores unless said)"


def kv_text(p: HardwareProfile, gpu=None) -> str:
    """What a cached position costs a decoded token per KV cache type, as timed on this machine in
    each kind of layers (on that GPU, else on the CPU)."""
    costs = p.memory.kv_costs if gpu is None else gpu.kv_costs
    if not costs:
        return "not timed yet (timed when the first model loads)"
    order = ("f16", "q8_0", "q4_0")
    groups: dict[str, list[tuple[str, float]]] = {}
    for key, ns in costs:
        base, threads = _threads_label(key)
        kv_type, _, kind = base.partition("@")
        if not kind:  # a profile saved by an older version
            continue
        groups.setdefault(f"{kind_label(kind)}{threads}", []).append((kv_type, ns))
    shown = (f"{where}: " + ", ".join(f"{t} {ns:.0f} ns" for t, ns in
                                      sorted(rows, key=lambda r: order.index(r[0]) if r[0] in order else 9))
             for where, rows in groups.items())
    where = "on this GPU" if gpu is not None else "on this machine, all cores unless said"
    return "; ".join(shown) + f" per cached position and layer (timed {where})"


def kind_label(key: str) -> str:
    """"Q4_1@576x1536x9x3x30" -> "Q4_1 in 576-wide layers"."""
    quant, _, dims = key.partition("@")
    return f"{quant} in {dims.split('x')[0]}-wide layers" if dims else quant


def hardware_text(p: HardwareProfile) -> str:
    c, m = p.cpu, p.memory
    lines = [
        f"CPU       {c.brand or 'unknown'} ({c.arch or '?'}): {c.physical_cores or '?'} physical cores, "
        f"{c.logical_cores or '?'} logical",
        f"          features: {', '.join(c.features) or 'none detected'}",
        f"          cache: L1d {size(c.l1d_bytes)}, L2 {size(c.l2_bytes)}, L3 {size(c.l3_bytes)}",
        f"Memory    {size(m.total_bytes)} total, {size(m.available_bytes)} available, swap {size(m.swap_total_bytes)}",
        f"          read bandwidth: {m.read_bandwidth_gbps if m.read_bandwidth_gbps is not None else '?'} GB/s with "
        f"every core reading, {m.read_bandwidth_1t_gbps if m.read_bandwidth_1t_gbps is not None else '?'} GB/s with one "
        f"(measured once on this machine; `tandem hardware --remeasure` measures again)",
        f"          llama.cpp's CPU kernels: {engine_text(p)}",
        f"          attention over a filled cache: {kv_text(p)}",
    ]
    if not p.gpus:
        lines.append("GPU       none found")
    for g in p.gpus:
        kind = "unified memory, shared with the CPU" if g.unified else "dedicated"
        lines.append(f"GPU {g.index}     {g.name} ({g.vendor}, {kind})")
        if g.memory_total_bytes is not None:
            lines.append(
                f"          memory: {size(g.memory_total_bytes)} total, {size(g.memory_free_bytes)} free, "
                f"{size(g.memory_used_by_others_bytes)} used by other programs"
            )
        details = []
        if g.compute_capability:
            details.append(f"compute {g.compute_capability}")
        if g.pcie_gen:
            details.append(f"PCIe {g.pcie_gen}.0 x{g.pcie_width} ({g.pcie_gbps} GB/s)")
        if g.power_limit_w:
            details.append(f"power {g.power_draw_w} of {g.power_limit_w} W")
        if g.driver:
            details.append(f"driver {g.driver}")
        if details:
            lines.append("          " + ", ".join(details))
        if g.engine_rates:
            handoff = f"; a CPU-GPU hand-off {g.handoff_s * 1e3:.2f} ms a token" if g.handoff_s is not None else ""
            lines.append("          llama.cpp here: " + ", ".join(f"{kind_label(k)} {gbps} GB/s" for k, gbps in g.engine_rates)
                         + handoff + " (timed on this GPU)")
        if g.kv_costs:
            lines.append(f"          attention over a filled cache here: {kv_text(p, g)}")
    e = p.engine
    offload = {True: "yes", False: "no (CPU-only build)", None: "unknown"}[e.supports_gpu_offload]
    lines.append(f"Engine    llama-cpp-python GPU offload: {offload}")
    if e.advice:
        lines.append(f"          ! {e.advice}")
    if p.power.on_battery is not None:
        lines.append(f"Power     {'on battery' if p.power.on_battery else 'on mains'}"
                     + (f" ({p.power.battery_percent:.0f}%)" if p.power.battery_percent is not None else "")
                     + (f"; CPU packages' power limit {p.power.cpu_power_limit_w:.0f} W"
                        if p.power.cpu_power_limit_w else ""))
    if p.disk.free_bytes is not None:
        lines.append(f"Disk      {size(p.disk.free_bytes)} free in {p.disk.path}")
    for problem in p.problems:
        lines.append(f"Not read  {problem}")
    return "\n".join(lines)


def model_text(info: ModelInfo) -> str:
    kv = sorted(set(info.n_head_kv))
    swa = sum(info.swa_layers)
    lines = [
        f"Model       {info.name or '?'} ({info.architecture}, {info.file_type or info.dominant_type})",
        f"File        {info.path or 'remote'}: {size(info.file_size)}, weights {size(info.weight_bytes)}, "
        f"{info.n_params / 1e9:.2f} B parameters",
        f"Layers      {info.n_layer}, embedding {info.n_embd}, feed-forward {info.n_ff}",
        f"Attention   {info.n_head} heads, {'/'.join(map(str, kv))} KV heads, head dim {info.head_dim_k}/{info.head_dim_v}",
        f"Context     trained for {info.n_ctx_train} tokens; rope base {info.rope_freq_base}"
        + (f", scaling {info.rope_scaling} x{info.rope_scaling_factor}" if info.rope_scaling else ""),
    ]
    if info.sliding_window:
        lines.append(f"Window      {swa} of {info.n_layer} layers attend to the last {info.sliding_window} tokens only")
    if info.n_expert:
        lines.append(f"Experts     {info.n_expert_used} of {info.n_expert} per token")
    lines.append(f"Vocabulary  {info.vocab_size} tokens ({info.tokenizer}); chat template: "
                 f"{'yes' if info.has_chat_template else 'no'}")
    types = ", ".join(f"{t} {size(b)}" for t, b in info.tensor_types.items())
    lines.append(f"Tensors     {types}")
    per_layer = sorted(set(info.layer_bytes))
    layer = size(per_layer[0]) if len(per_layer) == 1 else f"{size(per_layer[0])} to {size(per_layer[-1])}"
    lines.append(f"Per layer   {layer}; output {size(info.output_bytes)}"
                 f"{' (tied to the embedding)' if info.output_tied else ''}; token embedding {size(info.token_embd_bytes)}")
    return "\n".join(lines)


def plan_text(plan: Plan, info: ModelInfo) -> str:
    lines = [f"Plan for {info.name or plan.model_path}: {plan.decode_tps:.1f} tokens/s decode, "
             f"{plan.prefill_tps:.0f} tokens/s prefill (predicted)"]
    lines += [f"  - {r}" for r in plan.reasons]
    lines.append("Memory map:")
    for m in plan.memory:
        cap = size(m.capacity) if m.capacity is not None else "?"
        lines.append(f"  {m.device:<5} weights {size(m.weights)}, KV {size(m.kv)}, compute {size(m.compute)}, "
                     f"overhead {size(m.overhead)}, margin {size(m.margin)}: {size(m.total + m.margin)} of {cap} free")
    d = plan.dry_run
    if d:
        if d.get("ok"):
            lines.append(f"Checked by llama.cpp (dry run, {d['seconds']} s): KV {size(d['kv_bytes'])}, compute "
                         f"{', '.join(f'{k} {size(v)}' for k, v in d['compute_bytes'].items())}; total "
                         f"{size(d['total_bytes'])} vs {size(d['analytic_total_bytes'])} predicted ({d['difference']:+.1%})")
        else:
            lines.append(f"llama.cpp refused this plan in a dry run: {d.get('error')}")
    return "\n".join(lines)
