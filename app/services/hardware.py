"""This machine's profile, probed once per run (the bandwidth and the engine's rates are cached on disk)."""

from __future__ import annotations

import threading

from tandem.app.config import Settings
from tandem.runtime.hardware import HardwareProfile, load_profile, probe
from tandem.runtime.hardware.enginebench import cores_of, kv_kind, model_kinds, thread_suffix
from tandem.runtime.hardware.probe import offload_target, read_power, with_engine_rates, with_gpu_rates
from tandem.runtime.planner.battery import thread_options


class HardwareService:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._profile: HardwareProfile | None = None
        self._lock = threading.Lock()
        self._untimed: set[str] = set()  # kinds (and "kv:" + kind for their KV costs) llama.cpp could not time

    def profile(self, refresh: bool = False, remeasure: bool = False) -> HardwareProfile:
        """refresh: probe again; remeasure: measure the memory bandwidth (and the engine's rates
        of the weight types timed before) again too."""
        with self._lock:
            if self._profile is None or refresh or remeasure:
                if self.settings.hardware_profile is not None:
                    self._profile = load_profile(self.settings.hardware_profile)
                else:
                    self._profile = probe(self.settings.data_dir, remeasure=remeasure,
                                          engine_kinds=[] if self.settings.engine_bench else None)
                    self._profile = self._at_other_threads(self._profile, remeasure)
            return self._profile

    def _at_other_threads(self, profile: HardwareProfile, remeasure: bool) -> HardwareProfile:
        """Beside the all-core timings the probe read, those kept for Settings' thread count (or,
        on battery without one, for the fewer threads the planner weighs then); with remeasure,
        every thread count timed before is timed again."""
        if not self.settings.engine_bench:
            return profile
        cores = cores_of(profile)
        counts = set(range(1, cores)) if remeasure else self._fewer_threads(cores)
        for threads in sorted(t for t in counts if t != cores):
            profile = with_engine_rates(profile, self.settings.data_dir, [], remeasure=remeasure, threads=threads)
        return profile

    def _fewer_threads(self, cores: int) -> set[int]:
        """The thread counts timed besides every core: Settings' count, or on battery without
        one, those the planner weighs then (the power source read now: a laptop is unplugged)."""
        if self.settings.n_threads:
            return {self.settings.n_threads}
        power = read_power()
        return set(thread_options(cores)) if power is not None and power.on_battery else set()

    def for_model(self, info) -> HardwareProfile:
        """The profile with llama.cpp's rates for the kinds of layers that decide this model's CPU
        speed (a ModelInfo) and the cost of attending over a filled cache, at every physical core
        and at the thread count of Settings when it is another (on battery without one, at the
        fewer threads the planner weighs then): each not timed on this machine yet is timed now
        (seconds, once)."""
        profile = self.profile()
        if not self.settings.engine_bench or self.settings.hardware_profile is not None:
            return profile
        cores = cores_of(profile)
        for threads in sorted({cores} | self._fewer_threads(cores)):
            profile = self._timed(info, profile, threads, thread_suffix(threads, cores))
        return self._on_gpus(info, profile)

    def _on_gpus(self, info, profile: HardwareProfile) -> HardwareProfile:
        """The profile with this model's kinds timed on each GPU llama.cpp can offload to (the
        hand-off, and a filled cache there in its main kind, with them), those not timed there
        yet timed now."""
        targets = [g for g in profile.gpus if offload_target(g)]
        if not targets or not profile.engine.supports_gpu_offload:
            return profile
        kv = kv_kind(info)
        if kv is not None and (f"gpu:kv:{kv.key}" in self._untimed
                               or all(f"f16@{kv.key}" in dict(g.kv_costs) for g in targets)):
            kv = None
        kinds = [k for k in model_kinds(info) if f"gpu:{k.key}" not in self._untimed
                 and any(g.engine_rate(k.key) is None for g in targets)]
        if not kinds and kv is None:
            return profile
        with self._lock:
            timed = with_gpu_rates(self._profile or profile, self.settings.data_dir, kinds,
                                   kv_kinds=[kv] if kv else [])
            targets = [g for g in timed.gpus if offload_target(g)]
            # what could not be timed is said once (the profile's problems), then the card's
            # bandwidth serves for it
            self._untimed.update(f"gpu:{k.key}" for k in kinds if any(g.engine_rate(k.key) is None for g in targets))
            if kv is not None and not all(f"f16@{kv.key}" in dict(g.kv_costs) for g in targets):
                self._untimed.add(f"gpu:kv:{kv.key}")
            self._profile = timed
            return timed

    def _timed(self, info, profile: HardwareProfile, threads: int, suffix: str) -> HardwareProfile:
        costs = dict(profile.memory.kv_costs)
        kv = kv_kind(info)
        if kv is not None and (f"f16@{kv.key}{suffix}" in costs or f"kv:{kv.key}{suffix}" in self._untimed):
            kv = None
        kinds = [k for k in model_kinds(info)
                 if profile.memory.engine_rate(k.key + suffix) is None and k.key + suffix not in self._untimed]
        if not kinds and kv is None:
            return profile
        with self._lock:
            current = self._profile or profile
            timed = with_engine_rates(current, self.settings.data_dir, kinds, threads=threads,
                                      kv_kinds=[kv] if kv else [])
            # what could not be timed is said once (the profile's problems), then the fitted
            # constants serve for it
            self._untimed.update(k.key + suffix for k in kinds if timed.memory.engine_rate(k.key + suffix) is None)
            if kv is not None and f"f16@{kv.key}{suffix}" not in dict(timed.memory.kv_costs):
                self._untimed.add(f"kv:{kv.key}{suffix}")
            self._profile = timed
            return timed
