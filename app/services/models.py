"""Which models Tandem knows, and the one loaded in the engine.

The built-in model is registered at every start (its path moves when the package is
reinstalled); a model asked for by name is planned and loaded on demand by the scheduler
(runtime.engine.Scheduler), which keeps several loaded while they fit and unloads idle ones.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from tandem.app.config import Settings
from tandem.app.errors import InvalidRequest, ModelNotFound, NotFound
from tandem.app.remote import RemoteServed, RemoteService
from tandem.app.store import Store
from tandem.runtime import embedded
from tandem.runtime.engine import Lease, LoadParams, ModelWorker, ReplyStats, Scheduler
from tandem.runtime.engine.scheduler import Prepared
from tandem.runtime.engine.kvstate import state_path
from tandem.runtime.errors import DraftModelError, ModelLoadError, RuntimeFailure
from tandem.runtime.gguf import check_model_file
from tandem.runtime.hardware import HardwareProfile
from tandem.runtime.hardware.probe import refresh_memory, refresh_power
from tandem.runtime.model_info import ModelInfo, inspect_model
from tandem.runtime.planner import Calibration, Plan, candidates, plan_model, verify
from tandem.runtime.planner.speed import calibration_key
from tandem.runtime.planner.pool import plan_pool, worker_device
from tandem.runtime.planner.search import PlanError, plan_from_candidate, plan_gpus, predict_split, speed_fill
from tandem.runtime.pool import network
from tandem.runtime.pool.client import PooledWorker
from tandem.runtime.planner.speculative import draft_compatible

log = logging.getLogger("tandem")
MIN_TOKENS_TO_RECORD = 16
MIB = 1 << 20


@dataclass(frozen=True)
class ServedModel:
    """A model loaded by the scheduler, with the plan it was loaded with."""

    id: str
    name: str
    worker: ModelWorker
    plan: Plan
    info: ModelInfo
    hardware: HardwareProfile

    def describe(self) -> dict:
        p = self.worker.params
        return {
            "id": self.id,
            "name": self.name,
            "path": str(p.path),
            "n_ctx": p.n_ctx,
            "n_threads": p.n_threads,
            "n_gpu_layers": p.n_gpu_layers,
            "load_s": None if self.worker.load_s is None else round(self.worker.load_s, 3),
            "predicted_tps": self.plan.decode_tps,
            "context_policy": self.plan.context_policy,
        }


def model_id_for(path: Path) -> str:
    """A stable, URL-safe id from a file name: 'SmolLM2-135M-Instruct.Q4_1.gguf' -> 'smollm2-135m-instruct-q4_1'."""
    stem = path.name[: -len(".gguf")] if path.name.lower().endswith(".gguf") else path.name
    slug = re.sub(r"[^a-z0-9_]+", "-", stem.lower()).strip("-")
    return slug or "model"


class ModelService:
    def __init__(self, settings: Settings, store: Store, hardware: Callable[[], HardwareProfile],
                 hardware_for: Callable[[ModelInfo], HardwareProfile] | None = None):
        """hardware(): this machine's profile; hardware_for(info): the same with llama.cpp's rates
        for that model's kinds of layers timed (HardwareService.for_model), before it loads."""
        self.settings = settings
        self.store = store
        self.hardware = hardware
        self.hardware_for = hardware_for or (lambda info: hardware())
        budget = {"CPU": settings.memory_budget_mb * MIB} if settings.memory_budget_mb else None
        self.scheduler = Scheduler(self.free_memory, keep_alive_s=settings.keep_alive_s, budget=budget)
        self.remotes = RemoteService(store, settings.remote_timeout_s)

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
        if not name:  # the default, unless its file is gone: then the built-in model
            present = [m for m in models if Path(m["path"]).is_file()] or models
            return next((m for m in present if m["is_default"]),
                        next((m for m in present if m["source"] == "embedded"), present[0]))
        for m in models:
            if name in (m["id"], m["name"], Path(m["path"]).name):
                return m
        known = ", ".join(m["id"] for m in models)
        raise ModelNotFound(f"Model {name!r} is not installed. Available: {known}.")

    def plan_for(self, model: dict, n_ctx: int | None = None, info: ModelInfo | None = None,
                 dry_run: bool = True, hardware: HardwareProfile | None = None) -> Plan:
        """The planner's choice for a model ({"id", "path"}) on this machine, checked by a dry run.

        n_ctx None: the context from the settings; 0: the longest that costs no speed.
        """
        info = info or inspect_model(Path(model["path"]))
        hw = hardware or self.hardware()
        if hardware is None and self.settings.hardware_profile is None:
            hw = refresh_power(hw)  # a preview plans for the power source as it is now
        calibration = Calibration.from_records(self.store.measurements(calibration_key(hw)))
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
            except Exception as err:  # noqa: BLE001 - one bad file must not break the list of all models
                # a missing, damaged or hostile file is not offered as a draft; its own load or
                # info request reports why
                if not isinstance(err, (OSError, RuntimeFailure)):
                    log.warning("inspecting %s failed unexpectedly: %r", m["path"], err)
                out[m["id"]] = (m, None)
        return out

    def _drafts(self, model_id: str, info: ModelInfo, installed: dict) -> list[tuple[str, ModelInfo, float | None]]:
        return [(other_id, d, self.store.acceptance(model_id, f"draft:{Path(other['path']).name}"))
                for other_id, (other, d) in installed.items()
                if other_id != model_id and d is not None and draft_compatible(info, d) is None]

    def fallbacks(self, info: ModelInfo, plan: Plan, hw: HardwareProfile | None = None) -> list[Plan]:
        """Plans with fewer GPU layers, for when the chosen one fails to load."""
        hw = hw or self.hardware()
        found = candidates(info, hw, plan.n_ctx, threads=plan.n_threads, cal=plan.calibration, gpu=plan_gpus(hw, plan))
        lower = [c for c in found if c["ngl"] < plan.n_gpu_layers]
        return [plan_from_candidate(info, hw, None, c, plan.n_threads) for c in lower[:3]]

    # --- loaded models, through the scheduler
    def free_memory(self) -> dict[str, int]:
        """Bytes free now per device, read fresh (a saved profile for another machine: as saved)."""
        hw = self.hardware()
        if self.settings.hardware_profile is None:
            hw = refresh_memory(hw)
        free = {"CPU": hw.memory.available_bytes or 0}
        for g in hw.gpus:
            if not g.unified and g.memory_free_bytes is not None:
                free[f"GPU{g.index}"] = g.memory_free_bytes
        return free

    def acquire(self, name: str | None = None, keep_alive: float | None = None,
                cancelled: Callable[[], bool] = lambda: False) -> Lease:
        """The model `name` (None: the default) loaded, held until the lease and the replies
        submitted through it end; `lease.value` is its ServedModel. Loading plans it against the
        memory free now, unloading idle models when they are in the way."""
        try:
            model = self.resolve(name)
        except ModelNotFound:
            remote = self.remotes.split(name)
            if remote is None:
                raise
            return self._acquire_remote(name, *remote, keep_alive, cancelled)
        return self.scheduler.acquire(model["id"], lambda available: self._prepare(model, available),
                                      keep_alive=keep_alive, cancelled=cancelled)

    def _acquire_remote(self, name: str, row: dict, model_id: str, keep_alive, cancelled) -> Lease:
        """NAME/model: a model of a remote server, held by the scheduler like a local one (it
        takes no memory here). One made from an older registration (removed and added again
        with another URL or key) is dropped, not reused."""
        ids, error = self.remotes.models(row["name"])
        if error is None and model_id not in ids:
            raise ModelNotFound(f"{row['name']} has no model {model_id!r}. It has: {', '.join(ids) or 'none'}.")
        held = self.scheduler.get(name)
        if isinstance(held, RemoteServed) and held.worker.signature != self.remotes.signature(row):
            held.worker.close()  # a closed worker is never leased again; the scheduler drops it
        return self.scheduler.acquire(name, lambda available: Prepared({}, lambda: self.remotes.open(row, model_id)),
                                      keep_alive=keep_alive, cancelled=cancelled)

    def _prepare(self, model: dict, available: dict[str, int]) -> Prepared:
        path = check_model_file(model["path"])
        info = inspect_model(path)
        hw = self.hardware_for(info)
        if self.settings.hardware_profile is None:
            hw = refresh_power(hw)
        hw = replace(hw, memory=replace(hw.memory, available_bytes=available.get("CPU", hw.memory.available_bytes)),
                     gpus=tuple(replace(g, memory_free_bytes=available.get(f"GPU{g.index}", g.memory_free_bytes))
                                for g in hw.gpus))
        try:
            local = self.plan_for(model, info=info, hardware=hw)
        except PlanError as err:
            local, too_big = None, err
        plan, notes = self.pooled_plan(model, info, hw, local)
        if local is not None and notes:
            local = replace(local, reasons=local.reasons + tuple(notes))
        if plan is None:
            if local is None:
                if notes:  # why the registered workers could not take it either
                    raise PlanError(f"{too_big} {' '.join(notes)}", too_big.largest_ctx) from too_big
                raise too_big
            plan = local

        def open_model() -> tuple[ServedModel, ModelWorker]:
            worker, used = self._open(model, info, plan, hw, local)
            return ServedModel(model["id"], model["name"], worker, used, info, hw), worker

        # the workers' memory is theirs; here, room for this machine's own plan too when there is
        # one, as a pool that fails to load falls back to it
        here = [m for m in (local or plan).memory if not m.device.startswith("worker ")]
        return Prepared({m.device: m.total for m in here}, open_model, {m.device: m.margin for m in here})

    def pooled_plan(self, model: dict, info: ModelInfo, hw: HardwareProfile,
                    local: Plan | None) -> tuple[Plan | None, list[str]]:
        """The plan over this machine and the registered `tandem worker` machines when pooling
        pays, is needed (`local` None: the model does not fit here alone) or is asked for, else
        None; and why not (workers that do not answer, pooling that would be slower)."""
        if self.settings.pool == "off":
            return None, []
        endpoints = self.store.list_pool_workers()
        if not endpoints:
            return None, []
        from tandem.runtime.pool import rpc

        if not rpc.supported():
            return None, ["Workers are registered, but this engine build has no RPC backend: run ./dev.sh run "
                          "again to rebuild it with GGML_RPC=ON."]
        # a worker serves one pooled model at a time
        held = {ep for served in self.loaded_models() if served.plan.pool for ep in served.plan.pool["endpoints"]}
        links, notes = [], []
        for ep in endpoints:
            if ep in held:
                notes.append(f"The worker at {ep} is busy with another pooled model.")
                continue
            try:
                links.append(network.probe(ep))
            except network.WorkerUnreachable as err:
                notes.append(str(err))
        base = local
        if base is None and links:  # plan this machine's part as if the pool's memory were here
            extra = sum(max(0, int((worker_device(link) or {}).get("free_bytes") or 0)) for link in links)
            bigger = replace(hw, memory=replace(hw.memory, available_bytes=(hw.memory.available_bytes or 0) + extra))
            try:
                base = self.plan_for(model, info=info, hardware=bigger, dry_run=False)
            except PlanError:
                return None, notes
        if not links:
            return None, notes
        pooled, reasons = plan_pool(info, hw, base, links, fill=speed_fill(base.n_ctx), local_fits=local is not None,
                                    mode=self.settings.pool, layers=self.settings.pool_layers)
        return pooled, notes + ([] if pooled else reasons)

    def loaded_models(self) -> list[ServedModel]:
        """The local models loaded now (remote ones are held by the scheduler too, not listed)."""
        return [e["value"] for e in self.scheduler.loaded() if isinstance(e["value"], ServedModel)]

    def loaded_model(self, model_id: str) -> ServedModel | None:
        """The model when it is loaded now (without holding it)."""
        return self.scheduler.get(model_id)

    def status(self) -> dict:
        """What the engine is doing: each loaded (or loading) model's state, and failed loads."""
        rows = []
        for e in self.scheduler.loaded():
            served = e["value"]
            rows.append({"id": e["key"], "name": served.name if served else e["key"], "state": e["state"],
                         "queued": e["queued"], "running": e["running"], "error": e["error"], "holds": e["holds"],
                         "unload_in_s": e["expires_in_s"], "memory": e["memory"]})
        states = {r["state"] for r in rows}
        overall = ("failed" if "failed" in states else "busy" if "busy" in states else
                   "loading" if "loading" in states else "idle" if rows else "unloaded")
        return {"state": overall, "models": rows, "failures": dict(self.scheduler.failures)}

    def _open(self, model: dict, info: ModelInfo, plan: Plan,
              hw: HardwareProfile | None = None, local: Plan | None = None) -> tuple[ModelWorker, Plan]:
        if plan.pool:
            try:
                return self._start_pooled(model, plan), plan
            except ModelLoadError as err:
                if local is None:
                    raise
                log.warning("pooling %s failed; loading it here alone: %s", model["id"], err)
                network.forget()
                plan = replace(local, reasons=local.reasons + (f"Pooling failed ({err}); running on this machine alone.",))
        tried = []
        for attempt in [plan] + (self.fallbacks(info, plan, hw) if plan.n_gpu_layers else []):
            try:
                try:
                    worker = self._start(model, attempt)
                except DraftModelError as err:  # the model is fine: run it without the draft
                    log.warning("the draft model %s could not be used: %s", attempt.draft["model"], err)
                    attempt = replace(attempt, speculative="prompt_lookup", draft=None, reasons=attempt.reasons + (
                        f"The draft model {attempt.draft['model']} could not be used ({err}); prompt lookup instead.",))
                    worker = self._start(model, attempt)
            except ModelLoadError as err:
                tried.append(f"{attempt.n_gpu_layers} GPU layers ({err})")
                log.warning("loading %s with %d GPU layers failed; trying fewer", model["id"], attempt.n_gpu_layers)
                continue
            if tried:
                attempt = replace(attempt, fallback_from="; ".join(tried),
                                  reasons=attempt.reasons + (f"Loaded with fewer GPU layers after: {'; '.join(tried)}.",))
            return worker, attempt
        raise ModelLoadError(f"{model['name']} could not be loaded: {'; '.join(tried)}")

    def speculative_for(self, loaded: ServedModel) -> str:
        """The engine's speculative mode for a reply: the setting, or the plan's choice."""
        if self.settings.speculative != "auto":
            return self.settings.speculative
        spec = loaded.plan.speculative
        return "off" if spec == "none" else "draft" if spec.startswith("draft:") else "lookup"

    def forget_context(self, conversation_id: str) -> None:
        """A conversation is gone: drop its saved cache, and keep the engine from saving it again."""
        for served in self.loaded_models():
            served.worker.forget(conversation_id)
        state_path(self.settings.context_cache_dir, conversation_id).unlink(missing_ok=True)

    def _start(self, model: dict, plan: Plan) -> ModelWorker:
        draft = None
        if plan.draft:
            draft = LoadParams(path=Path(plan.draft["path"]), n_ctx=plan.n_ctx, n_gpu_layers=plan.draft["n_gpu_layers"],
                               n_threads=plan.n_threads, n_threads_batch=plan.n_threads_batch, flash_attn=True,
                               main_gpu=plan.gpu_index or 0)
        return ModelWorker.open(
            LoadParams(path=Path(model["path"]), **plan.load_kwargs()),
            saved_states=self.settings.context_cache_dir if self.settings.context_cache_mb else None,
            saved_cap_bytes=self.settings.context_cache_mb * 1024 * 1024, draft=draft,
            max_queue=self.settings.max_queue, max_reply=self.settings.max_reply_tokens,
        )

    # --- pool workers
    def pool_status(self, fresh: bool = False) -> dict:
        from tandem.runtime.pool import rpc

        rows = []
        for ep in self.store.list_pool_workers():
            try:
                rows.append({"endpoint": ep, "status": "ok", **network.probe(ep, refresh=fresh).as_dict()})
            except network.WorkerUnreachable as err:
                rows.append({"endpoint": ep, "status": "failed", "error": str(err)})
        return {"supported": rpc.supported(), "mode": self.settings.pool, "workers": rows}

    def add_pool_worker(self, endpoint: str) -> dict:
        try:
            network.split_endpoint(endpoint)
            link = network.probe(endpoint, refresh=True)
        except (ValueError, network.WorkerUnreachable) as err:
            raise InvalidRequest(str(err)) from err
        self.store.add_pool_worker(endpoint)
        self._replan()
        return {"endpoint": endpoint, "status": "ok", **link.as_dict()}

    def remove_pool_worker(self, endpoint: str) -> None:
        if not self.store.delete_pool_worker(endpoint):
            raise NotFound(f"No worker {endpoint} is registered.")
        network.forget(endpoint)
        self._replan()

    def _replan(self) -> None:
        """Local models are unloaded (when their replies end): their next request plans again, with
        or without the pool."""
        for served in self.loaded_models():
            self.scheduler.unload(served.id)

    def _start_pooled(self, model: dict, plan: Plan) -> PooledWorker:
        return PooledWorker.open(LoadParams(path=Path(model["path"]), **plan.load_kwargs()),
                                 max_queue=self.settings.max_queue, max_reply=self.settings.max_reply_tokens,
                                 saved_states=self.settings.context_cache_dir if self.settings.context_cache_mb else None,
                                 saved_cap_bytes=self.settings.context_cache_mb * 1024 * 1024)

    def record(self, loaded: ServedModel, stats: ReplyStats, source: str) -> None:
        """Keep the measured decode speed of a plain reply for the planner's calibration. A reply
        that drafted tokens decoded at another speed: its acceptance is what it teaches (stored
        with the message), not the plain speed."""
        if not isinstance(loaded, ServedModel):  # a remote server's speed teaches this machine's planner nothing
            return
        if not stats.decode_tps or stats.completion_tokens < MIN_TOKENS_TO_RECORD or stats.drafted_tokens:
            return
        plan = loaded.plan
        if plan.pool:  # a pooled token's time is mostly the workers' and the network's
            return
        fill = stats.prompt_tokens + stats.completion_tokens // 2  # the context's mean fill while decoding
        predicted, share = predict_split(loaded.info, loaded.hardware, plan, fill)
        self.store.add_measurement(
            machine_id=calibration_key(loaded.hardware), model_id=loaded.id, n_ctx=plan.n_ctx,
            n_gpu_layers=plan.n_gpu_layers, n_threads=plan.n_threads, type_k=plan.type_k,
            completion_tokens=stats.completion_tokens,
            predicted_tps=predicted, cpu_share=share,
            measured_tps=stats.decode_tps, source=source,
        )

    def close(self) -> None:
        """Unload every model: running replies end as cancelled, waiting ones are told."""
        self.scheduler.close()
