"""Remote OpenAI-compatible servers whose models Tandem serves as NAME/model (this machine only:
the registry holds their keys)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from tandem.app.api.deps import ModelsDep

router = APIRouter(prefix="/api/remotes", tags=["remotes"])


class NewRemote(BaseModel):
    name: str = Field(..., min_length=1, max_length=32)
    url: str = Field(..., min_length=1, max_length=500)
    key: str | None = Field(None, max_length=500)


@router.get("")
async def list_remotes(models: ModelsDep, fresh: bool = False) -> list[dict]:
    """Each server with its models, and "failed" with the error when it does not answer."""
    return await asyncio.to_thread(models.remotes.list, fresh)


@router.post("", status_code=201)
async def add_remote(body: NewRemote, models: ModelsDep) -> dict:
    """Registers the server once it answered with its models (a clear 422 otherwise)."""
    return await asyncio.to_thread(models.remotes.add, body.name, body.url, body.key or None)


@router.delete("/{name}", status_code=204)
async def remove_remote(name: str, models: ModelsDep) -> Response:
    await asyncio.to_thread(models.remotes.remove, name)
    for entry in models.scheduler.loaded():  # its models stop being held
        if entry["key"].startswith(name + "/"):
            models.scheduler.unload(entry["key"])
    return Response(status_code=204)
