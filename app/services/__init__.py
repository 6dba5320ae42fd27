"""The services behind the routes, opened before the server starts so that a start-up failure
(an unreadable model, a model that does not fit, a locked database) reaches the person as one
clear message."""

from __future__ import annotations

from dataclasses import dataclass

from app.config import Settings
from app.services.chat import ChatService
from app.services.hardware import HardwareService
from app.services.models import ModelService
from app.store import Store


@dataclass
class Services:
    settings: Settings
    store: Store
    hardware: HardwareService
    models: ModelService
    chat: ChatService

    @classmethod
    def open(cls, settings: Settings) -> "Services":
        store = Store(settings.db_path)
        hardware = HardwareService(settings)
        models = ModelService(settings, store, hardware.profile)
        try:
            models.register_startup_models()
            models.acquire().release()  # the default model, loaded before the first request
        except BaseException:
            models.close()
            store.close()
            raise
        return cls(settings, store, hardware, models, ChatService(store, models))

    def close(self) -> None:
        self.models.close()
        self.store.close()
