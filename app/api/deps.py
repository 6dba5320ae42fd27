"""Dependencies the routes ask for, as Annotated aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from pydantic import AfterValidator, Field

from tandem.app.config import Settings
from tandem.app.errors import InvalidRequest
from tandem.app.hub import HubService
from tandem.app.services.chat import ChatService
from tandem.app.services.hardware import HardwareService
from tandem.app.services.models import ModelService
from tandem.app.services.settings import SettingsService
from tandem.app.store import Store


def valid_utf8(text: str) -> str:
    """JSON may carry lone surrogate escapes ("\ud800"); no tokenizer can encode them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode; it holds a lone surrogate (such as \\ud800)") from None
    return text


# A stored row's id: SQLite integers are 64-bit, so a larger number can name nothing.
RowId = Annotated[int, Field(ge=1, le=2**63 - 1)]
# Seconds a model stays loaded once idle (0: unload after this request; negative: always).
KeepAlive = Annotated[float, Field(ge=-1e9, le=1e9, allow_inf_nan=False)]


# Text a model reads
Utf8 = AfterValidator(valid_utf8)


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _store(request: Request) -> Store:
    return request.app.state.store


def _models(request: Request) -> ModelService:
    return request.app.state.models


def _hardware(request: Request) -> HardwareService:
    return request.app.state.services.hardware


def _hub(request: Request) -> HubService:
    return request.app.state.services.hub


def _chat(request: Request) -> ChatService:
    return request.app.state.chat


def _prefs(request: Request) -> SettingsService:
    return request.app.state.services.prefs


def check_max_tokens(asked: int | None, settings: Settings) -> None:
    """A reply's max_tokens past the configured bound is refused, whichever API asked."""
    if asked is not None and asked > settings.max_reply_tokens:
        raise InvalidRequest(f"max_tokens is at most {settings.max_reply_tokens} (TANDEM_MAX_REPLY_TOKENS).")


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[Store, Depends(_store)]
ModelsDep = Annotated[ModelService, Depends(_models)]
ChatDep = Annotated[ChatService, Depends(_chat)]
HardwareDep = Annotated[HardwareService, Depends(_hardware)]
HubDep = Annotated[HubService, Depends(_hub)]
PrefsDep = Annotated[SettingsService, Depends(_prefs)]
