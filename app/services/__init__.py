"""The services behind the routes, opened before the server starts so that a start-up failure
(an unreadable model, a model that does not fit, a locked database) reaches the person as one
clear message."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tandem.app.config import Settings
from tandem.app.hub import HubService
from tandem.app.services.chat import ChatService
from tandem.app.services.hardware import HardwareService
from tandem.app.services.models import ModelService
from tandem.app.services.settings import SettingsService, apply_saved_start_settings
from tandem.app.store import Store
from tandem.runtime import embedded

log = logging.getLogger("tandem")


def _load_default(settings: Settings, store: Store, models: ModelService) -> None:
    """Load the default model before the first request. A default chosen earlier that no longer
    loads gives way to the built-in model (and stops being the default), so Tandem still starts;
    a model asked for now (TANDEM_MODEL, --model) that fails is an error to show."""
    try:
        models.acquire().release()
    except Exception as err:  # noqa: BLE001 - whatever a broken default file does, Tandem starts
        default = models.resolve(None)
        if settings.model is not None or default["source"] == "embedded":
            raise
        log.warning("the default model %s could not be loaded (%s); starting with the built-in model",
                    default["id"], err)
        builtin = store.get_model(embedded.MODEL_ID)
        store.upsert_model({**builtin, "is_default": 1})
        models.acquire(embedded.MODEL_ID).release()


@dataclass
class Services:
    settings: Settings
    store: Store
    hardware: HardwareService
    models: ModelService
    chat: ChatService
    hub: HubService
    prefs: SettingsService

    @classmethod
    def open(cls, settings: Settings) -> "Services":
        store = Store(settings.db_path)
        apply_saved_start_settings(settings, store)
        cut = store.mark_interrupted()
        if cut:
            log.warning("%d reply(s) cut off when Tandem last stopped are kept, marked interrupted", cut)
        hardware = HardwareService(settings)
        models = ModelService(settings, store, hardware.profile, hardware.for_model)
        hub = None
        try:
            models.register_startup_models()
            _load_default(settings, store, models)
            hub = HubService(settings, store, hardware.profile, unload=models.scheduler.unload, remotes=models.remotes)
            hub.downloads.resume_interrupted()  # downloads cut short by a restart go on
        except BaseException:
            if hub is not None:
                hub.close()
            models.close()
            store.close()
            raise
        prefs = SettingsService(settings, store)
        return cls(settings, store, hardware, models, ChatService(store, models, prefs), hub, prefs)

    def close(self) -> None:
        self.hub.close()
        self.models.close()
        self.store.close()
