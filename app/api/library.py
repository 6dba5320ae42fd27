"""Search across conversations, saved system-prompt presets, and the app's settings."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Response
from pydantic import BaseModel, Field

from tandem.app.api.deps import PrefsDep, RowId, StoreDep
from tandem.app.errors import InvalidRequest

router = APIRouter(prefix="/api", tags=["library"])


class NewPreset(BaseModel):
    name: str = Field(..., min_length=1, max_length=100)
    content: str = Field(..., min_length=1, max_length=20_000)


@router.get("/search")
def search(store: StoreDep, q: Annotated[str, Query(max_length=500)] = "",
           limit: Annotated[int, Query(ge=1, le=200)] = 30) -> list[dict]:
    """Conversations whose title or messages contain the words of q (prefixes match)."""
    return store.search(q, limit)


@router.get("/presets")
def list_presets(store: StoreDep) -> list[dict]:
    return store.list_presets()


@router.post("/presets", status_code=201)
def add_preset(body: NewPreset, store: StoreDep) -> dict:
    if not body.name.strip() or not body.content.strip():
        raise InvalidRequest("A preset needs a name and a system prompt that are not blank.")
    return store.add_preset(body.name, body.content)


@router.delete("/presets/{preset_id}", status_code=204)
def delete_preset(preset_id: RowId, store: StoreDep) -> Response:
    store.delete_preset(preset_id)
    return Response(status_code=204)


@router.get("/settings")
def get_settings(prefs: PrefsDep) -> dict:
    """Values, which take effect at the next start (`restart`), this run's values of those, choices."""
    return prefs.describe()


@router.patch("/settings")
def change_settings(prefs: PrefsDep, changes: Annotated[Any, Body()]) -> dict:
    if not isinstance(changes, dict):
        raise InvalidRequest('Send the settings to change as a JSON object, e.g. {"theme": "dark"}.')
    return prefs.update(changes)


@router.post("/settings/api-key")
def renew_api_key(prefs: PrefsDep) -> dict:
    """A new API key for other devices on the network (used from the next start)."""
    return prefs.renew_api_key()
