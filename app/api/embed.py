"""Embeddings for both APIs: the model leased like any request, the texts embedded on its worker."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request

from tandem.app.api.disconnect import ClientWatch
from tandem.runtime.engine import Failed, Finished
from tandem.runtime.engine.stream import Embedded
from tandem.runtime.errors import Interrupted


async def embed_texts(texts: list[str], model: str | None, keep_alive, request: Request, models,
                      truncate: bool = False) -> tuple[Any, Embedded]:
    """Embed texts with a model (leased like any request); returns (the loaded model, Embedded).
    truncate: a text longer than the model reads keeps its start (else ContextOverflow)."""
    with ClientWatch(request) as watch:
        lease = await asyncio.to_thread(models.acquire, model, keep_alive, watch.cancelled)
        with lease:
            loaded = lease.value
            stream = watch.attach(lease.embed(texts, loop=asyncio.get_running_loop(), truncate=truncate))
        while True:
            event = await stream.next_event()
            if isinstance(event, Embedded):
                return loaded, event
            if isinstance(event, Failed):
                raise event.error
            if isinstance(event, Finished):  # cancelled: the client left
                raise Interrupted("The client went away.")
