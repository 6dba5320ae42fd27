"""This machine's hardware profile, probed once per run (the bandwidth is cached on disk)."""

from __future__ import annotations

import threading

from tandem.app.config import Settings
from tandem.runtime.hardware import HardwareProfile, load_profile, probe


class HardwareService:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._profile: HardwareProfile | None = None
        self._lock = threading.Lock()

    def profile(self, refresh: bool = False, remeasure: bool = False) -> HardwareProfile:
        """refresh: probe again; remeasure: measure the memory bandwidth again too."""
        with self._lock:
            if self._profile is None or refresh or remeasure:
                if self.settings.hardware_profile is not None:
                    self._profile = load_profile(self.settings.hardware_profile)
                else:
                    self._profile = probe(self.settings.data_dir, remeasure=remeasure,
                                          measure_engine=self.settings.engine_bench)
            return self._profile
