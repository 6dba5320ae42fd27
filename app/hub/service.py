"""The model manager behind the CLI and the API: find, judge, download, import, list, remove."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from tandem.app.config import Settings
from tandem.app.errors import Conflict, InvalidRequest
from tandem.app.hub.client import HubClient
from tandem.app.hub.downloads import DownloadManager, model_paths
from tandem.app.hub.headers import RemoteInspector
from tandem.app.hub.importers import Importer, ImportResult
from tandem.app.hub.names import UnsafeName, check_file_name, check_repo_id, find_model, group_models
from tandem.app.hub.transfer import TransferOptions
from tandem.app.hub.verdict import Verdict, installed_infos, judge, recommend
from tandem.app.store import Store
from tandem.runtime.errors import ModelFileError, RuntimeFailure
from tandem.runtime.gguf import split_parts
from tandem.runtime.hardware import HardwareProfile
from tandem.runtime.model_info import inspect_model
from tandem.runtime.planner import Calibration
from tandem.runtime.planner.speed import calibration_key

CATALOG = Path(__file__).resolve().parents[2] / "assets" / "catalog.json"


def models_dir(settings: Settings) -> Path:
    """Where downloads go: TANDEM_MODELS_DIR, else the data directory's models/."""
    env = os.environ.get("TANDEM_MODELS_DIR")
    return Path(env).expanduser() if env else settings.data_dir / "models"


def model_files(model: dict) -> tuple[list[Path], list[str]]:
    """(files of a registered model, names of those missing): every part of a split model."""
    first = Path(model["path"])
    if not first.exists():
        return [], [first.name]
    try:
        parts = split_parts(first)
    except ModelFileError:
        from tandem.app.hub.names import split_info

        stem, _, count = split_info(first.name)
        parts = [first.with_name(f"{stem}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
    return [p for p in parts if p.exists()], [p.name for p in parts if not p.exists()]


def installed_models(store: Store) -> list[dict]:
    """Registered models with where they live, disk used and `missing` (a file is gone: offer
    re-download / locate / remove; never load it or make it the default)."""
    out = []
    for m in store.list_models():
        present, missing = model_files(m)
        out.append({**m, "missing": bool(missing), "missing_files": missing,
                    "disk_bytes": sum(p.stat().st_size for p in present), "location": str(Path(m["path"]).parent),
                    "owned": bool(m.get("owned"))})
    return out


class HubService:
    def __init__(self, settings: Settings, store: Store, hardware: Callable[[], HardwareProfile], *,
                 client: HubClient | None = None, options: TransferOptions | None = None, max_active: int = 2,
                 run_all: bool = True, unload: Callable[[str], object] | None = None, remotes=None):
        """unload(model_id): unloads a model before its files are removed (the scheduler's).
        remotes: the RemoteService, whose Tandems say where a model too big here would run."""
        self.settings, self.store, self.hardware = settings, store, hardware
        self._unload = unload
        self.remotes = remotes
        self.client = client or HubClient()
        self.inspector = RemoteInspector(self.client, store)
        self.models_dir = models_dir(settings)
        self.downloads = DownloadManager(store, self.client, self.models_dir, max_active=max_active,
                                         options=options or TransferOptions.from_env(),
                                         run_all=run_all)
        self.importer = Importer(store)

    def close(self) -> None:
        self.downloads.close()

    # --- find
    def search(self, query: str, sort: str = "downloads", limit: int = 30) -> list[dict]:
        return self.client.search(query, sort, limit)

    @staticmethod
    def catalog() -> dict:
        try:
            return json.loads(CATALOG.read_text())
        except OSError:
            return {"version": 1, "models": [], "drafts": []}

    # --- judge
    def _calibration(self, hw: HardwareProfile) -> Calibration:
        return Calibration.from_records(self.store.measurements(calibration_key(hw)))

    def repo(self, repo_id: str, revision: str | None = None) -> dict:
        """A repo's GGUF models, each with the verdict for this machine and one marked recommended."""
        return self._view(repo_id, revision)[0]

    def _view(self, repo_id: str, revision: str | None) -> tuple[dict, list, dict]:
        listing = self.client.repo(repo_id, revision)
        models = group_models(listing.files)
        hw = self.hardware()
        cal = self._calibration(hw)
        installed = installed_infos(self.store.list_models())
        have = {(m.get("repo_id"), Path(m["path"]).name) for m in self.store.list_models()}
        out, verdicts, fetched, errors = [], [], 0, {}
        safe, refused = [], []
        for m in models:
            try:
                for f in m.files:
                    check_file_name(f.name)
                if not m.complete:
                    raise InvalidRequest(f"{m.key}: the repo does not list every part of this split model.")
                safe.append(m)
            except (UnsafeName, InvalidRequest) as err:  # never fetched, never offered
                refused.append((m, None, 0, err))
        for model, info, n, error in self.inspector.inspect_all(repo_id, listing.commit, safe) + refused:
            fetched += n
            entry = {**model.to_dict(), "installed": (repo_id, Path(model.key).name) in have, "recommended": False}
            if info is None:
                entry.update(verdict=None, error=str(error))
                errors[model.key] = error
            else:
                v = judge(info, hw, cal, installed, self.settings.n_threads)
                verdicts.append(v)
                entry.update(verdict=v, error=None, architecture=info.architecture, n_params=info.n_params,
                             file_type=info.file_type, n_ctx_train=info.n_ctx_train)
            out.append(entry)
        best = recommend(verdicts)
        for entry in out:
            if isinstance(entry["verdict"], Verdict):
                entry["recommended"] = entry["verdict"] is best
                entry["verdict"] = entry["verdict"].to_dict()
        too_big = [e for e in out if isinstance(e["verdict"], dict) and e["verdict"]["fit"] == "too_big"]
        if too_big and self.remotes is not None:  # where else it would run: the registered Tandems' planners
            elsewhere = self.remotes.verdicts_elsewhere(repo_id)
            for e in too_big:
                e["elsewhere"] = elsewhere.get(e["key"], [])
        out.sort(key=lambda e: (e["size"], e["key"]))
        view = {"repo_id": repo_id, "commit": listing.commit, "gated": listing.gated, "models": out,
                "recommended": next((e["key"] for e in out if e.get("recommended")), None),
                "fetched_bytes": fetched, "total_bytes": sum(m.size for m in models)}
        return view, models, errors

    def judge_installed(self, model: dict) -> Verdict | None:
        try:
            info = inspect_model(Path(model["path"]))
        except (OSError, RuntimeFailure):
            return None
        hw = self.hardware()
        installed = installed_infos(self.store.list_models())
        installed.pop(model["id"], None)
        return judge(info, hw, self._calibration(hw), installed, self.settings.n_threads)

    # --- download
    def pull(self, repo_id: str, wanted: str | None, revision: str | None = None) -> tuple[dict, dict]:
        """(the model's entry with its verdict, the download's status) for REPO and a quant or file."""
        check_repo_id(repo_id)
        view, models, errors = self._view(repo_id, revision)
        model = find_model(models, wanted or view["recommended"])
        if model.key in errors:  # not judged (gated, gone, refused): not downloaded
            raise errors[model.key]
        for f in model.files:  # a verdict from the cache made no request: check access and presence now
            check_file_name(f.name)
            self.client.file_location(repo_id, f.name, view["commit"])
        entry = next(e for e in view["models"] if e["key"] == model.key)
        return entry, self.downloads.start(repo_id, view["commit"], model)

    # --- installed
    def installed(self) -> list[dict]:
        return installed_models(self.store)

    def import_path(self, path: Path) -> ImportResult:
        return self.importer.import_path(path)

    def import_source(self, source: str) -> ImportResult:
        return self.importer.import_source(source)

    def remove(self, model_id: str) -> dict:
        """Unregister a model; its files go too when Tandem downloaded them (never an imported file)."""
        model = self.store.get_model(model_id)
        if model["source"] == "embedded":
            raise Conflict("The built-in model cannot be removed; it is part of Tandem.")
        if self._unload is not None:
            self._unload(model_id)  # now when idle, else as soon as its replies end
        deleted = []
        if model.get("owned"):
            present, _ = model_files(model)
            root = self.models_dir.resolve()
            for p in present:
                if root not in p.resolve().parents:
                    raise InvalidRequest(f"{p} is outside the models folder {root}; Tandem only deletes "
                                         "files it downloaded there. Delete it yourself if you mean to.")
                p.unlink()
                deleted.append(str(p))
            self._prune(Path(model["path"]).parent)
        for d in self.store.list_downloads():
            if d["model_id"] == model_id:
                self.store.delete_download(d["id"])
        self.store.delete_model(model_id)
        return {"id": model_id, "deleted_files": deleted, "unregistered": True}

    def _prune(self, folder: Path) -> None:
        """Remove a repo folder left empty (but for the lock file), and its owner folder if empty too."""
        root = self.models_dir.resolve()
        for d in (folder, folder.parent):
            d = d.resolve()
            if root not in d.parents:
                return
            (d / ".tandem-download.lock").unlink(missing_ok=True)
            try:
                d.rmdir()
            except OSError:
                return


__all__ = ["HubService", "installed_models", "model_files", "models_dir", "model_paths"]
