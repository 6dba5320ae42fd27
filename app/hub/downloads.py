"""Downloads from the hub: a queue with a limit on how many run at once, pause / resume / cancel,
progress, and state in SQLite so that a download goes on after the app was closed or killed.

Files land in `<models dir>/<owner>/<repo>/<file>.part` and are renamed only when every part of
the model has its hub SHA-256; the GGUF structure is then validated and the model registered in
the same transaction that marks the download complete, so it is registered once and never half.
A lock file per repo folder keeps two Tandem processes from writing the same file.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid
from pathlib import Path, PurePosixPath

from tandem.app.errors import Conflict, TandemError
from tandem.app.hub.client import HubClient
from tandem.app.hub.names import RemoteModel, check_file_name, check_repo_id, safe_path, slug, unique_id
from tandem.app.hub.transfer import Stopped, TransferError, TransferOptions, fetch
from tandem.app.store import Store
from tandem.runtime.errors import InvalidModelFile, ModelFileError
from tandem.runtime.gguf import check_model_file

log = logging.getLogger("tandem")
ACTIVE = ("queued", "downloading")
RESUMABLE = ("queued", "downloading", "paused", "failed")
SPACE_MARGIN = 64 << 20
ELSEWHERE_RECHECK_S = 10.0


class NotEnoughSpace(TandemError):
    status = 507
    code = "not_enough_space"


def model_paths(models_dir: Path, repo_id: str, names: list[str]) -> list[Path]:
    """Where a model's files go: every name checked, every path inside the models folder."""
    owner, repo = check_repo_id(repo_id)
    return [safe_path(models_dir, owner, repo, check_file_name(n)) for n in names]


def part_of(path: Path) -> Path:
    return path.with_name(path.name + ".part")


class _Busy(Exception):
    """Another process holds the download's lock: it is under way there."""


class _Job:
    def __init__(self, download_id: str):
        self.id = download_id
        self.stop = threading.Event()
        self.reason = "paused"  # what a stop means: "paused" or "cancelled"
        self.done = 0
        self.window: list[tuple[float, int]] = []  # (time, bytes done) over the last seconds: the speed
        self.last_saved = 0.0


class DownloadManager:
    def __init__(self, store: Store, client: HubClient, models_dir: Path, *, max_active: int = 2,
                 options: TransferOptions | None = None, run_all: bool = True):
        """run_all False (the command line): run only the downloads started or resumed through this
        manager, not every download the database holds."""
        self.store, self.client, self.models_dir = store, client, Path(models_dir)
        self.max_active, self.options = max_active, options or TransferOptions()
        self._mine: set[str] | None = None if run_all else set()
        self._lock = threading.RLock()
        self._jobs: dict[str, _Job] = {}
        self._elsewhere: set[str] = set()  # downloads another process holds: looked at again later
        self._closed = False

    # --- commands
    def start(self, repo_id: str, revision: str | None, model: RemoteModel) -> dict:
        """Queue a model's download (or return the one already under way for it)."""
        if not model.complete:
            raise InvalidModelFile(f"{model.key}: the repo does not list every part of this split model.")
        paths = model_paths(self.models_dir, repo_id, [f.name for f in model.files])
        with self._lock:  # two clicks on one model make one download
            existing = self.store.find_download(repo_id, model.key, RESUMABLE)
            if existing is not None:
                self._claim(existing["id"])
                if existing["status"] in ("paused", "failed"):
                    return self.resume(existing["id"])
                self._schedule()
                return self.status(existing["id"])
            done = self.store.find_download(repo_id, model.key, ("complete",))
            if done is not None and all(p.exists() for p in paths):
                raise Conflict(f"{model.key} is already installed as {done['model_id']}.")
            self.check_space(paths, [f.size or 0 for f in model.files])
            row = {"id": uuid.uuid4().hex, "repo_id": repo_id, "revision": revision, "model_key": model.key,
                   "quant": model.quant, "status": "queued", "total_bytes": model.size}
            files = [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in model.files]
            self.store.create_download(row, files)
            self._claim(row["id"])
        self._schedule()
        return self.status(row["id"])

    def pause(self, download_id: str) -> dict:
        return self._stop(download_id, "paused")

    def cancel(self, download_id: str) -> dict:
        d = self._stop(download_id, "cancelled")
        if d["status"] == "cancelled":
            self._remove_parts(d)
        return self.status(download_id)

    def resume(self, download_id: str) -> dict:
        d = self.store.get_download(download_id)
        if d["status"] in ("complete", "cancelled"):
            raise Conflict(f"That download is {d['status']}; start it again from the repo.")
        self._claim(download_id)
        if d["status"] in ("paused", "failed"):
            paths = model_paths(self.models_dir, d["repo_id"], [f["name"] for f in d["files"]])
            self.check_space(paths, [f["size"] or 0 for f in d["files"]])
            self.store.update_download(download_id, status="queued", error=None, error_code=None)
        self._schedule()
        return self.status(download_id)

    def resume_interrupted(self) -> list[str]:
        """Downloads that were running when the process ended go on (call once at start)."""
        ids = [d["id"] for d in self.store.list_downloads(ACTIVE)]
        self._schedule()
        return ids

    def wait(self, download_id: str, timeout: float | None = None, tick=None) -> dict:
        """Block until the download ends (complete, paused, failed, cancelled); tick(status) meanwhile."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            s = self.status(download_id)
            if tick:
                tick(s)
            if s["status"] not in ACTIVE and download_id not in self._jobs:
                return s
            if end is not None and time.monotonic() > end:
                return s
            time.sleep(0.2)

    def close(self) -> None:
        """Pause what runs (it goes on at the next start)."""
        with self._lock:
            self._closed = True
            jobs = list(self._jobs.values())
        for job in jobs:
            job.reason = "interrupted"
            job.stop.set()
        for job in jobs:
            t = getattr(job, "thread", None)
            if t is not None:
                t.join(10)

    # --- state
    def status(self, download_id: str) -> dict:
        d = self.store.get_download(download_id)
        job = self._jobs.get(download_id)
        if job is not None:
            d["done_bytes"] = max(d["done_bytes"] or 0, job.done)
            d["speed_bps"] = self._speed(job)
        else:
            d["speed_bps"] = 0.0
        total = d["total_bytes"] or 0
        left = max(0, total - (d["done_bytes"] or 0))
        d["eta_s"] = round(left / d["speed_bps"], 1) if d["speed_bps"] else None
        d["progress"] = round((d["done_bytes"] or 0) / total, 4) if total else None
        return d

    def list(self) -> list[dict]:
        return [self.status(d["id"]) for d in self.store.list_downloads()]

    def check_space(self, paths: list[Path], sizes: list[int]) -> None:
        need = sum(max(0, s - (part_of(p).stat().st_size if part_of(p).exists() else 0))
                   for p, s in zip(paths, sizes) if not p.exists())
        probe = self.models_dir
        while not probe.exists():
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        if need + SPACE_MARGIN > free:
            raise NotEnoughSpace(
                f"This download needs {need / 1e9:.2f} GB but the disk holding {self.models_dir} has "
                f"{free / 1e9:.2f} GB free. Free some space, or set TANDEM_MODELS_DIR to a folder on another disk.")

    # --- the workers
    def _schedule(self) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                active = self.store.list_downloads(ACTIVE)
            except sqlite3.ProgrammingError:
                return
            waiting = [d for d in active if d["id"] not in self._jobs and d["id"] not in self._elsewhere
                       and (self._mine is None or d["id"] in self._mine)]
            for d in waiting[: max(0, self.max_active - len(self._jobs))]:
                job = _Job(d["id"])
                job.done = d["done_bytes"] or 0
                self._jobs[d["id"]] = job
                job.thread = threading.Thread(target=self._run, args=(job,), name=f"download-{d['id'][:8]}",
                                              daemon=True)
                job.thread.start()

    def _recheck(self, download_id: str) -> None:
        with self._lock:
            self._elsewhere.discard(download_id)
        self._schedule()

    def _claim(self, download_id: str) -> None:
        if self._mine is not None:
            self._mine.add(download_id)

    def _stop(self, download_id: str, reason: str) -> dict:
        d = self.store.get_download(download_id)
        if d["status"] in ("complete", "cancelled"):
            raise Conflict(f"That download is already {d['status']}.")
        with self._lock:
            job = self._jobs.get(download_id)
            if job is not None:
                job.reason = reason
                job.stop.set()
        if job is not None:
            job.thread.join(30)
        else:
            self.store.update_download(download_id, status=reason)
        return self.status(download_id)

    def _run(self, job: _Job) -> None:
        try:
            self._settle(job)
        except sqlite3.ProgrammingError:  # the store closed under a running download (shutdown)
            log.info("download %s stopped with the app; it goes on at the next start", job.id)
        finally:
            with self._lock:
                self._jobs.pop(job.id, None)
            self._schedule()

    def _settle(self, job: _Job) -> None:
        """Run a download and record how it ended."""
        try:
            self._download(job)
        except _Busy:
            # taken up again if that process ends without finishing it
            log.info("download %s runs in another Tandem process", job.id)
            with self._lock:
                self._elsewhere.add(job.id)
            timer = threading.Timer(ELSEWHERE_RECHECK_S, self._recheck, args=(job.id,))
            timer.daemon = True
            timer.start()
        except Stopped:
            status = "queued" if job.reason == "interrupted" else job.reason
            self.store.update_download(job.id, status=status, done_bytes=job.done)
        except TransferError as err:
            status = "paused" if err.code == "disk_full" else "failed"
            self.store.update_download(job.id, status=status, error=str(err), error_code=err.code, done_bytes=job.done)
        except (TandemError, ModelFileError) as err:
            self.store.update_download(job.id, status="failed", error=str(err), error_code=err.code)
        except sqlite3.ProgrammingError:
            raise
        except Exception as err:  # a bug must not leave the row "downloading" forever
            log.exception("download %s failed", job.id)
            self.store.update_download(job.id, status="failed", error=f"Unexpected error: {err}", error_code="internal")

    def _download(self, job: _Job) -> None:
        d = self.store.get_download(job.id)
        paths = model_paths(self.models_dir, d["repo_id"], [f["name"] for f in d["files"]])
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        for p in paths:
            p.parent.mkdir(parents=True, exist_ok=True)
            safe_path(self.models_dir, p.relative_to(self.models_dir))  # no symlink made it leave meanwhile
        lock = (paths[0].parent / ".tandem-download.lock").open("w")
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _Busy() from None
            self.store.update_download(job.id, status="downloading", error=None, error_code=None)
            verified = {f["name"] for f in d["files"] if f["status"] == "verified"}
            job.done = sum(f["size"] or 0 for f in d["files"] if f["name"] in verified)

            def progress(n: int) -> None:
                job.done += n
                now = time.monotonic()
                job.window.append((now, job.done))
                if now - job.last_saved > 1.0:
                    job.last_saved = now
                    job.window = [w for w in job.window if now - w[0] < 5.0]
                    self.store.update_download(job.id, done_bytes=job.done)

            for f, path in zip(d["files"], paths):
                if f["name"] in verified and (path.exists() or part_of(path).exists()):
                    continue
                digest = fetch(self.client, d["repo_id"], d["revision"], f["name"], f["size"], f["sha256"],
                               part_of(path), job.stop, progress, self.options)
                self.store.update_download_file(job.id, f["name"], status="verified", done_bytes=f["size"],
                                                sha256=f["sha256"] or digest)
            self._finish(job, d, paths)
        finally:
            lock.close()

    def _finish(self, job: _Job, d: dict, paths: list[Path]) -> None:
        for p in paths:
            if part_of(p).exists():
                os.replace(part_of(p), p)
        try:
            check_model_file(paths[0])
        except InvalidModelFile as err:
            for p in paths:
                p.unlink(missing_ok=True)
            self.store.update_download_file_all(job.id, status="pending", done_bytes=0)
            raise TransferError(f"{err} The files were deleted.", "invalid_model") from err
        d = self.store.get_download(job.id)
        model = {"id": self._model_id(d["repo_id"], paths[0]), "name": _display_name(d["repo_id"], d["quant"], d["model_key"]),
                 "path": str(paths[0]), "source": "download", "size_bytes": sum(p.stat().st_size for p in paths),
                 "is_default": 0, "repo_id": d["repo_id"], "quant": d["quant"], "sha256": d["files"][0]["sha256"],
                 "owned": 1}
        job.done = model["size_bytes"]
        if self.store.finish_download(job.id, model):
            self.store.update_download(job.id, done_bytes=job.done)

    def _model_id(self, repo_id: str, path: Path) -> str:
        base = slug(path.name[:-5] if path.name.lower().endswith(".gguf") else path.name)
        taken = {m["id"]: m["path"] for m in self.store.list_models()}
        return unique_id([base, slug(f"{repo_id.split('/')[0]}-{base}")], str(path), taken)

    def _remove_parts(self, d: dict) -> None:
        for p in model_paths(self.models_dir, d["repo_id"], [f["name"] for f in d["files"]]):
            part_of(p).unlink(missing_ok=True)

    @staticmethod
    def _speed(job: _Job) -> float:
        w = [x for x in job.window if time.monotonic() - x[0] < 5.0]
        if len(w) < 2 or w[-1][0] <= w[0][0]:
            return 0.0
        return (w[-1][1] - w[0][1]) / (w[-1][0] - w[0][0])


def _display_name(repo_id: str, quant: str | None, model_key: str) -> str:
    """What people see in the picker: the repo's name without the GGUF suffix, and the quant
    ('SmolLM2-135M-Instruct Q4_1'); the file name when the quant is unknown."""
    if not quant:
        return PurePosixPath(model_key).name
    repo = repo_id.split("/")[-1]
    for suffix in ("-GGUF", "_GGUF", "-gguf", ".gguf"):
        repo = repo.removesuffix(suffix)
    return f"{repo} {quant}"
