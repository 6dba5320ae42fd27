"""The model manager over HTTP: search the hub, a repo's files with the verdict for this machine,
downloads (start, pause, resume, cancel, progress as server-sent events), imports, installed
models (with missing files marked) and removal.

Events of GET /api/hub/downloads/events[?id=...]: `downloads` with the list of downloads (bytes
done, total, speed_bps, eta_s, status, error) whenever it changes; with ?id= the stream ends after
an `end` event once that download stops (complete, paused, failed, cancelled).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, model_validator

from tandem.app.api.deps import HubDep
from tandem.app.api.sse import SSE_HEADERS, SSE_RESPONSE, sse

router = APIRouter(prefix="/api/hub", tags=["hub"])
EVENT_INTERVAL_S = 0.5


class NewDownload(BaseModel):
    repo_id: str = Field(..., max_length=200)
    # a quant (Q4_K_M) or a file name in the repo; empty: the quant recommended for this machine
    file: str | None = Field(None, max_length=300)
    revision: str | None = Field(None, max_length=100)


class ImportRequest(BaseModel):
    path: str | None = Field(None, max_length=4096)
    source: Literal["lmstudio", "ollama", "hf-cache"] | None = None

    @model_validator(mode="after")
    def _one(self) -> "ImportRequest":
        if (self.path is None) == (self.source is None):
            raise ValueError('Give either "path" (a .gguf file or folder) or "source" (lmstudio, ollama, hf-cache).')
        return self


@router.get("/search")
def search(hub: HubDep, q: str = "", sort: Literal["downloads", "likes", "recent", "trending"] = "downloads",
           limit: int = Query(30, ge=1, le=100)) -> list[dict]:
    return hub.search(q, sort, limit)


@router.get("/catalog")
def catalog(hub: HubDep) -> dict:
    return hub.catalog()


@router.get("/repos/{owner}/{name}")
def repo(owner: str, name: str, hub: HubDep, revision: str | None = None) -> dict:
    """The repo's GGUF models grouped by quant (split files as one), each with its verdict here."""
    return hub.repo(f"{owner}/{name}", revision)


@router.get("/downloads")
def downloads(hub: HubDep) -> list[dict]:
    return hub.downloads.list()


@router.post("/downloads", status_code=202)
def start_download(body: NewDownload, hub: HubDep) -> dict:
    entry, status = hub.pull(body.repo_id, body.file, body.revision)
    return {**status, "verdict": entry.get("verdict")}


@router.get("/downloads/events", responses=SSE_RESPONSE)
async def download_events(request: Request, hub: HubDep, id: str | None = None) -> StreamingResponse:
    if id is not None:
        hub.downloads.status(id)  # 404 now, not inside the stream

    async def stream():
        last = None
        while not await request.is_disconnected():
            items = await asyncio.to_thread(hub.downloads.list)
            text = json.dumps(items, default=str)
            if text != last:
                last = text
                yield sse(text, "downloads")
            if id is not None:
                mine = next((d for d in items if d["id"] == id), None)
                if mine is None or mine["status"] not in ("queued", "downloading"):
                    yield sse(json.dumps(mine, default=str), "end")
                    return
            await asyncio.sleep(EVENT_INTERVAL_S)

    return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)


@router.get("/downloads/{download_id}")
def download(download_id: str, hub: HubDep) -> dict:
    return hub.downloads.status(download_id)


@router.post("/downloads/{download_id}/{action}")
def download_action(download_id: str, action: Literal["pause", "resume", "cancel"], hub: HubDep) -> dict:
    return getattr(hub.downloads, action)(download_id)


@router.post("/import")
def import_models(body: ImportRequest, hub: HubDep) -> dict:
    result = hub.import_path(Path(body.path)) if body.path else hub.import_source(body.source)
    return result.to_dict()


@router.get("/models")
def installed(hub: HubDep) -> list[dict]:
    """Registered models with location, disk used, source, whether Tandem owns the files, and
    `missing` (the file is gone: offer re-download, locate or remove)."""
    return hub.installed()


@router.delete("/models/{model_id}")
def remove(model_id: str, hub: HubDep) -> dict:
    """Unregister a model; files Tandem downloaded are deleted, imported files are left alone."""
    return hub.remove(model_id)
