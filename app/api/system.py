"""Health and the models Tandem has, for the UI."""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path

from fastapi import APIRouter

from tandem.app import __version__
from tandem.app.api.deps import ChatDep, HardwareDep, ModelsDep, StoreDep
from tandem.runtime.model_info import inspect_model
from tandem.runtime.planner.speed import calibration_key

router = APIRouter(prefix="/api", tags=["system"])


@router.get("/health")
def health(models: ModelsDep) -> dict:
    """status "ok", or "failed" when a model's engine stopped or its last load failed (the reason
    is in engine); model: the default model (loaded or not), engine: what each loaded model does."""
    engine = models.status()
    default = models.resolve(None)
    loaded = models.loaded_model(default["id"])
    model = loaded.describe() if loaded is not None else {"id": default["id"], "name": default["name"]}
    state = next((m["state"] for m in engine["models"] if m["id"] == default["id"]), "unloaded")
    failed = engine["state"] == "failed" or default["id"] in engine["failures"]
    return {
        "status": "failed" if failed else "ok",
        "version": __version__,
        "model": {**model, "state": state},
        "engine": engine,
    }


@router.get("/models")
def list_models(store: StoreDep, models: ModelsDep) -> list[dict]:
    """Installed models; each names the installed models that can draft for it (speculative decoding)."""
    loaded = {m.id for m in models.loaded_models()}
    drafts = models.draft_pairs()
    local = [{**m, "is_default": bool(m["is_default"]), "loaded": m["id"] in loaded, "drafts": drafts.get(m["id"], [])}
             for m in store.list_models()]
    remote = [{"id": m, "name": m.split("/", 1)[1], "remote": r["name"], "remote_status": r["status"],
               "remote_error": r["error"], "source": "remote", "is_default": False, "loaded": False, "drafts": []}
              for r in models.remotes.list() for m in r["models"]]
    return local + remote


@router.get("/hardware")
async def hardware(hardware: HardwareDep, refresh: bool = False) -> dict:
    profile = await asyncio.to_thread(hardware.profile, refresh)
    from tandem.runtime.hardware import energy

    counters = await asyncio.to_thread(energy.meter)
    return {**profile.to_dict(), "energy_counters": counters.sources}


@router.get("/models/{model_id}/info")
async def model_info(model_id: str, store: StoreDep) -> dict:
    model = store.get_model(model_id)
    info = await asyncio.to_thread(inspect_model, Path(model["path"]))
    return {"id": model["id"], "name": model["name"], **info.to_dict()}


@router.get("/models/{model_id}/plan")
async def model_plan(model_id: str, models: ModelsDep, store: StoreDep, n_ctx: int | None = None) -> dict:
    """The plan the model runs with (when loaded and no context is asked), or a fresh plan."""
    model = store.get_model(model_id)
    loaded = models.loaded_model(model_id)
    if loaded is not None and n_ctx is None:
        plan, is_loaded = loaded.plan, True
    else:
        plan, is_loaded = await asyncio.to_thread(models.plan_for, model, n_ctx), False
    machine = calibration_key(models.hardware())
    recent = [m for m in store.measurements(machine) if m["model_id"] == model_id][-20:]
    measured = {
        "count": len(recent),
        "median_measured_tps": statistics.median(m["measured_tps"] for m in recent) if recent else None,
        "median_predicted_tps": statistics.median(m["predicted_tps"] for m in recent) if recent else None,
    }
    return {"loaded": is_loaded, "measured": measured, **plan.to_dict()}


@router.get("/context")
async def default_context(chat: ChatDep) -> dict:
    """What a new conversation does when it outgrows the context (the default model's plan)."""
    return await asyncio.to_thread(chat.context_info, None)
