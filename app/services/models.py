"""Which models Tandem knows, and the one loaded in the engine.

The built-in model is registered at every start (its path moves when the package is
reinstalled); a model asked for by name is loaded on demand, replacing the current one.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from app.config import Settings
from app.errors import NotFound
from app.store import Store
from runtime import embedded
from runtime.engine import EngineSession, LoadParams, ReplyStats
from runtime.engine.kvstate import state_path
from runtime.errors import DraftModelError, ModelLoadError, RuntimeFailure
from runtime.gguf import check_model_file
from runtime.hardware import HardwareProfile
from runtime.model_info import ModelInfo, inspect_model
from runtime.planner import Calibration, Plan, candidates, plan_model, verify
from runtime.planner.search import plan_from_candidate, plan_gpus, predict_split
from runtime.planner.speculative import draft_compatible

log = logging.getLogger("tandem")
MIN_TOKENS_TO_RECORD = 16


@dataclass(frozen=True)
class LoadedModel:
    id: str
    name: str
    session: EngineSession
    plan: Plan
    info: ModelInfo
    hardware: HardwareProfile

    def describe(self) -> dict:
        p = self.session.params
        return {
            "id": self.id,
            "name": self.name,
            "path": str(p.path),
            "n_ctx": p.n_ctx,
            "n_threads": p.n_threads,
            "n_gpu_layers": p.n_gpu_layers,
            "load_s": None if self.session.load_s is None else round(self.session.load_s, 3),
            "predicted_tps": self.plan.decode_tps,
            "context_policy": self.plan.context_policy,
        }


def model_id_for(path: Path) -> str:
    """A stable, URL-safe id from a file name: 'SmolLM2-135M-Instruct.Q4_1.gguf' -> 'smollm2-135m-instruct-q4_1'."""
    stem = path.name[: -len(".gguf")] if path.name.lower().endswith(".gguf") else path.name
    slug = re.sub(r"[^a-z0-9_]+", "-", stem.lower()).strip("-")
    return slug or "model"


class ModelService:
    def __init__(self, settings: Settings, store: Store, hardware: Callable[[], HardwareProfile]):
        self.settings = settings
        self.store = store
        self.hardware = hardware
        self._lock = threading.Lock()
        self.loaded: LoadedModel | None = None

    def register_startup_models(self) -> dict:
        """Register the built-in model, and TANDEM_MODEL when given; return the default one."""
        builtin = embedded.default_model_path()
        has_other_default = any(m["is_default"] and m["source"] != "embedded" for m in self.store.list_models())
        self.store.upsert_model(
            {
                "id": embedded.MODEL_ID,
                "name": embedded.DISPLAY_NAME,
                "path": str(builtin),
                "source": "embedded",
                "size_bytes": builtin.stat().st_size,
                "is_default": 0 if has_other_default else 1,
            }
        )
        if self.settings.model is not None:
            path = check_model_file(self.settings.model)
            return self.store.upsert_model(
                {
                    "id": model_id_for(path),
                    "name": path.name,
                    "path": str(path),
                    "source": "local",
                    "size_bytes": path.stat().st_size,
                    "is_default": 1,
                }
            )
        return next(m for m in self.store.list_models() if m["is_default"])

    def resolve(self, name: str | None) -> dict:
        """The registered model a client means: by id, by display or file name, or the default."""
        models = self.store.list_models()
        if not name:
            return next((m for m in models if m["is_default"]), models[0])
        for m in models:
            if name in (m["id"], m["name"], Path(m["path"]).name):
                return m
        known = ", ".join(m["id"] for m in models)
        raise NotFound(f"Model {name!r} is not installed. Available: {known}.")

    def plan_for(self, model: dict, n_ctx: int | None = None, info: ModelInfo | None = None,
                 dry_run: bool = True) -> Plan:
        """The planner's choice for a model ({"id", "path"}) on this machine, checked by a dry run.

        n_ctx None: the context from the settings; 0: the longest that costs no speed.
        """
        info = info or inspect_model(Path(model["path"]))
        hw = self.hardware()
        calibration = Calibration.from_records(self.store.measurements(hw.machine_id))
        asked = (n_ctx if n_ctx is not None else self.settings.n_ctx) or None
        drafts = tuple(self.drafts_for(model, info)) if self.settings.speculative == "auto" else ()
        plan = plan_model(info, hw, asked, calibration=calibration, model_key=model["id"],
                          threads=self.settings.n_threads, drafts=drafts)
        if self.settings.n_gpu_layers is not None and self.settings.n_gpu_layers != plan.n_gpu_layers:
            plan = replace(plan, n_gpu_layers=self.settings.n_gpu_layers,
                           reasons=plan.reasons + (f"n_gpu_layers {self.settings.n_gpu_layers} set by you (TANDEM_N_GPU_LAYERS).",))
        return verify(plan) if dry_run else plan

    def drafts_for(self, model: dict, info: ModelInfo | None = None) -> list[tuple[str, ModelInfo, float | None]]:
        """Installed models that may draft for `model` (same tokenizer and vocabulary, much smaller),
        with the acceptance measured by earlier replies with that pair (None: not measured yet)."""
        installed = self._inspect_installed()
        if info is None:
            _, info = installed.get(model["id"], (model, None))
            info = info or inspect_model(Path(model["path"]))
        return self._drafts(model["id"], info, installed)

    def draft_pairs(self) -> dict[str, list[str]]:
        """For every installed model, the installed models that may draft for it (each file read once)."""
        installed = self._inspect_installed()
        return {mid: [d for d, _, _ in self._drafts(mid, info, installed)] if info else []
                for mid, (_, info) in installed.items()}

    def _inspect_installed(self) -> dict[str, tuple[dict, ModelInfo | None]]:
        out = {}
        for m in self.store.list_models():
            try:
                out[m["id"]] = (m, inspect_model(Path(m["path"])))
            except (OSError, RuntimeFailure):
                out[m["id"]] = (m, None)  # a missing or damaged file is not offered as a draft
        return out

    def _drafts(self, model_id: str, info: ModelInfo, installed: dict) -> list[tuple[str, ModelInfo, float | None]]:
        return [(other_id, d, self.store.acceptance(model_id, f"draft:{Path(other['path']).name}"))
                for other_id, (other, d) in installed.items()
                if other_id != model_id and d is not None and draft_compatible(info, d) is None]

    def fallbacks(self, info: ModelInfo, plan: Plan) -> list[Plan]:
        """Plans with fewer GPU layers, for when the chosen one fails to load."""
        hw = self.hardware()
        found = candidates(info, hw, plan.n_ctx, threads=plan.n_threads, cal=plan.calibration, gpu=plan_gpus(hw, plan))
        lower = [c for c in found if c["ngl"] < plan.n_gpu_layers]
        return [plan_from_candidate(info, hw, None, c, plan.n_threads) for c in lower[:3]]

    def engine_for(self, name: str | None = None) -> LoadedModel:
        """The loaded model for `name`, planning and loading it first (and unloading another) when needed."""
        model = self.resolve(name)
        with self._lock:
            if self.loaded is not None and self.loaded.id == model["id"] and not self.loaded.session.closed:
                return self.loaded
            info = inspect_model(Path(model["path"]))
            session, plan = self._open(model, info, self.plan_for(model, info=info))
            loaded = LoadedModel(model["id"], model["name"], session, plan, info, self.hardware())
            previous, self.loaded = self.loaded, loaded
        if previous is not None:
            previous.session.close()
        return loaded

    def _open(self, model: dict, info: ModelInfo, plan: Plan) -> tuple[EngineSession, Plan]:
        tried = []
        for attempt in [plan] + (self.fallbacks(info, plan) if plan.n_gpu_layers else []):
            try:
                try:
                    session = self._start(model, attempt)
                except DraftModelError as err:  # the model is fine: run it without the draft
                    log.warning("the draft model %s could not be used: %s", attempt.draft["model"], err)
                    attempt = replace(attempt, speculative="prompt_lookup", draft=None, reasons=attempt.reasons + (
                        f"The draft model {attempt.draft['model']} could not be used ({err}); prompt lookup instead.",))
                    session = self._start(model, attempt)
            except ModelLoadError as err:
                tried.append(f"{attempt.n_gpu_layers} GPU layers ({err})")
                log.warning("loading %s with %d GPU layers failed; trying fewer", model["id"], attempt.n_gpu_layers)
                continue
            if tried:
                attempt = replace(attempt, fallback_from="; ".join(tried),
                                  reasons=attempt.reasons + (f"Loaded with fewer GPU layers after: {'; '.join(tried)}.",))
            return session, attempt
        raise ModelLoadError(f"{model['name']} could not be loaded: {'; '.join(tried)}")

    def speculative_for(self, loaded: LoadedModel) -> str:
        """The engine's speculative mode for a reply: the setting, or the plan's choice."""
        if self.settings.speculative != "auto":
            return self.settings.speculative
        spec = loaded.plan.speculative
        return "off" if spec == "none" else "draft" if spec.startswith("draft:") else "lookup"

    def forget_context(self, conversation_id: str) -> None:
        """A conversation is gone: drop its saved cache, and keep the engine from saving it again."""
        loaded = self.loaded
        if loaded is not None:
            loaded.session.forget(conversation_id)
        state_path(self.settings.context_cache_dir, conversation_id).unlink(missing_ok=True)

    def _start(self, model: dict, plan: Plan) -> EngineSession:
        draft = None
        if plan.draft:
            draft = LoadParams(path=Path(plan.draft["path"]), n_ctx=plan.n_ctx, n_gpu_layers=plan.draft["n_gpu_layers"],
                               n_threads=plan.n_threads, n_threads_batch=plan.n_threads_batch, flash_attn=True,
                               main_gpu=plan.gpu_index or 0)
        return EngineSession.open(
            LoadParams(path=Path(model["path"]), **plan.load_kwargs()),
            saved_states=self.settings.context_cache_dir if self.settings.context_cache_mb else None,
            saved_cap_bytes=self.settings.context_cache_mb * 1024 * 1024, draft=draft,
        )

    def record(self, loaded: LoadedModel, stats: ReplyStats, source: str) -> None:
        """Keep the measured decode speed of a real reply for the planner's calibration."""
        if not stats.decode_tps or stats.completion_tokens < MIN_TOKENS_TO_RECORD:
            return
        plan = loaded.plan
        fill = stats.prompt_tokens + stats.completion_tokens // 2  # the context's mean fill while decoding
        predicted, share = predict_split(loaded.info, loaded.hardware, plan, fill)
        self.store.add_measurement(
            machine_id=loaded.hardware.machine_id, model_id=loaded.id, n_ctx=plan.n_ctx,
            n_gpu_layers=plan.n_gpu_layers, n_threads=plan.n_threads, type_k=plan.type_k,
            completion_tokens=stats.completion_tokens,
            predicted_tps=predicted, cpu_share=share,
            measured_tps=stats.decode_tps, source=source,
        )

    def close(self) -> None:
        with self._lock:
            loaded, self.loaded = self.loaded, None
        if loaded is not None:
            loaded.session.close()
