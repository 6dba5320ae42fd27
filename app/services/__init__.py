"""The services behind the routes, opened before the server starts so that a start-up failure
(an unreadable model, a locked database) reaches the person as one clear message."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from app.config import Settings
from app.services.chat import ChatService
from app.services.models import ModelService
from app.store import Store


@dataclass
class Services:
    settings: Settings
    store: Store
    models: ModelService
    chat: ChatService
    _hardware: object = field(default=None, repr=False)
    _hardware_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def hardware(self, refresh: bool = False):
        """This machine's HardwareProfile, probed once (bandwidth cached in the data directory)."""
        from runtime.hardware import load_profile, probe

        with self._hardware_lock:
            if self._hardware is None or refresh:
                if self.settings.hardware_profile is not None:
                    self._hardware = load_profile(self.settings.hardware_profile)
                else:
                    self._hardware = probe(self.settings.data_dir)
            return self._hardware

    @classmethod
    def open(cls, settings: Settings) -> "Services":
        store = Store(settings.db_path)
        models = ModelService(settings, store)
        try:
            default = models.register_startup_models()
            models.engine_for(default["id"])
        except BaseException:
            models.close()
            store.close()
            raise
        return cls(settings, store, models, ChatService(store, models))

    def close(self) -> None:
        self.models.close()
        self.store.close()
