"""The services behind the routes, opened before the server starts so that a start-up failure
(an unreadable model, a model that does not fit, a locked database) reaches the person as one
clear message."""

from __future__ import annotations

from dataclasses import dataclass

from app.config import Settings
from app.hub import HubService
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
    hub: HubService

    @classmethod
    def open(cls, settings: Settings) -> "Services":
        store = Store(settings.db_path)
        hardware = HardwareService(settings)
        models = ModelService(settings, store, hardware.profile)
        hub = None
        try:
            models.register_startup_models()
            models.acquire().release()  # the default model, loaded before the first request
            hub = HubService(settings, store, hardware.profile, unload=models.scheduler.unload)
            hub.downloads.resume_interrupted()  # downloads cut short by a restart go on
        except BaseException:
            if hub is not None:
                hub.close()
            models.close()
            store.close()
            raise
        return cls(settings, store, hardware, models, ChatService(store, models), hub)

    def close(self) -> None:
        self.hub.close()
        self.models.close()
        self.store.close()
