"""This machine's profile, probed once per run (the bandwidth and the engine's rates are cached on disk)."""

from __future__ import annotations

import threading

from tandem.app.config import Settings
from tandem.runtime.hardware import HardwareProfile, load_profile, probe
from tandem.runtime.hardware.enginebench import kind_for, main_types
from tandem.runtime.hardware.probe import with_engine_rates, with_kv_costs


class HardwareService:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._profile: HardwareProfile | None = None
        self._lock = threading.Lock()
        self._untimed: set[str] = set()  # kinds llama.cpp could not be timed on
        self._kv_untimed = False

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
            return self._profile

    def for_model(self, info) -> HardwareProfile:
        """The profile with llama.cpp's rates for the kinds of layers that decide this model's CPU
        speed (a ModelInfo): each not timed on this machine yet is timed now (seconds, once)."""
        profile = self.profile()
        if not self.settings.engine_bench or self.settings.hardware_profile is not None:
            return profile
        missing = [k for k in (kind_for(q, info) for q in main_types(info.tensor_types))
                   if profile.memory.engine_rate(k.key) is None and k.key not in self._untimed]
        kv_missing = not profile.memory.kv_costs and not self._kv_untimed
        if not missing and not kv_missing:
            return profile
        with self._lock:
            current = self._profile or profile
            timed = with_engine_rates(current, self.settings.data_dir, missing) if missing else current
            if kv_missing:
                timed = with_kv_costs(timed, self.settings.data_dir)
                self._kv_untimed = not timed.memory.kv_costs
            # a kind that could not be timed is said once (the profile's problems), then the
            # fitted constants serve for it
            self._untimed.update(k.key for k in missing if timed.memory.engine_rate(k.key) is None)
            self._profile = timed
            return timed
