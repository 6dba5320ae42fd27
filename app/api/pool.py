"""Machines running `tandem worker` that a model's layers may spread over (this machine only: a
worker's port is unauthenticated, and registering one sends it model weights)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from tandem.app.api.deps import ModelsDep

router = APIRouter(prefix="/api/pool", tags=["pool"])


class NewWorker(BaseModel):
    endpoint: str = Field(..., min_length=3, max_length=300, description="HOST:PORT of a `tandem worker`")


@router.get("")
async def list_workers(models: ModelsDep, fresh: bool = False) -> dict:
    """Each worker with its devices, free memory, round trip and bandwidth, or its error; and
    whether this engine build can pool at all."""
    return await asyncio.to_thread(models.pool_status, fresh)


@router.post("", status_code=201)
async def add_worker(body: NewWorker, models: ModelsDep) -> dict:
    """Registers the worker once it answered the probe (a clear 422 otherwise). Models loaded now
    are planned again at their next request."""
    return await asyncio.to_thread(models.add_pool_worker, body.endpoint.strip())


@router.delete("/{endpoint}", status_code=204)
async def remove_worker(endpoint: str, models: ModelsDep) -> Response:
    await asyncio.to_thread(models.remove_pool_worker, endpoint)
    return Response(status_code=204)
