"""Which models Tandem knows, and the one loaded in the engine.

The built-in model is registered at every start (its path moves when the package is
reinstalled); a model asked for by name is loaded on demand, replacing the current one.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

from app.config import Settings
from app.errors import NotFound
from app.store import Store
from runtime import embedded
from runtime.engine import EngineSession, LoadParams
from runtime.gguf import check_model_file


@dataclass(frozen=True)
class LoadedModel:
    id: str
    name: str
    session: EngineSession

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
        }


def model_id_for(path: Path) -> str:
    """A stable, URL-safe id from a file name: 'SmolLM2-135M-Instruct.Q4_1.gguf' -> 'smollm2-135m-instruct-q4_1'."""
    stem = path.name[: -len(".gguf")] if path.name.lower().endswith(".gguf") else path.name
    slug = re.sub(r"[^a-z0-9_]+", "-", stem.lower()).strip("-")
    return slug or "model"


class ModelService:
    def __init__(self, settings: Settings, store: Store):
        self.settings = settings
        self.store = store
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

    def engine_for(self, name: str | None = None) -> LoadedModel:
        """The loaded model for `name`, loading it first (and unloading another) when needed."""
        model = self.resolve(name)
        with self._lock:
            if self.loaded is not None and self.loaded.id == model["id"] and not self.loaded.session.closed:
                return self.loaded
            params = LoadParams(
                path=Path(model["path"]),
                n_ctx=self.settings.n_ctx,
                n_threads=self.settings.n_threads,
                n_threads_batch=self.settings.n_threads,
                n_gpu_layers=self.settings.n_gpu_layers,
            )
            session = EngineSession.open(params)
            previous, self.loaded = self.loaded, LoadedModel(model["id"], model["name"], session)
        if previous is not None:
            previous.session.close()
        return self.loaded

    def close(self) -> None:
        with self._lock:
            loaded, self.loaded = self.loaded, None
        if loaded is not None:
            loaded.session.close()
