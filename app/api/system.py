"""Health and the models Tandem has, for the UI."""

from __future__ import annotations

from fastapi import APIRouter

from app import __version__
from app.api.deps import ModelsDep, StoreDep

router = APIRouter(prefix="/api", tags=["system"])


@router.get("/health")
def health(models: ModelsDep) -> dict:
    loaded = models.loaded
    return {
        "status": "ok",
        "version": __version__,
        "model": loaded.describe() if loaded is not None else None,
    }


@router.get("/models")
def list_models(store: StoreDep, models: ModelsDep) -> list[dict]:
    loaded_id = models.loaded.id if models.loaded is not None else None
    return [{**m, "is_default": bool(m["is_default"]), "loaded": m["id"] == loaded_id} for m in store.list_models()]
