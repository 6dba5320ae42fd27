"""GGUF models already on this machine, registered where they are (never copied): a file, a
folder, the Hugging Face cache, LM Studio's models folder, Ollama's blob store.

Each file is validated (runtime.gguf) before it is registered; one that is not a complete GGUF is
reported with the reason and skipped. Imported models are not Tandem's: removing one only
unregisters it. Ollama's manifests name their blobs by digest; a digest is checked to be a
SHA-256 before it becomes a path.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from tandem.app.errors import InvalidRequest
from tandem.app.hub.names import quant_of, slug, split_info, unique_id
from tandem.app.store import Store
from tandem.runtime.errors import RuntimeFailure
from tandem.runtime.gguf import check_model_file

DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")
OLLAMA_MODEL = "application/vnd.ollama.image.model"
OLLAMA_TEMPLATE = "application/vnd.ollama.image.template"
SOURCES = ("lmstudio", "ollama", "hf-cache")


@dataclass
class ImportResult:
    registered: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {"path", "reason"}

    def to_dict(self) -> dict:
        return {"registered": self.registered, "skipped": self.skipped}


def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser()
    return home / "hub"


def lmstudio_dirs() -> list[Path]:
    if os.environ.get("LMSTUDIO_MODELS_DIR"):
        return [Path(os.environ["LMSTUDIO_MODELS_DIR"]).expanduser()]
    return [Path.home() / ".lmstudio" / "models", Path.home() / ".cache" / "lm-studio" / "models"]


def ollama_dirs() -> list[Path]:
    if os.environ.get("OLLAMA_MODELS"):
        return [Path(os.environ["OLLAMA_MODELS"]).expanduser()]
    return [Path.home() / ".ollama" / "models", Path("/usr/share/ollama/.ollama/models")]


def _first_parts(folder: Path) -> list[Path]:
    """GGUF files under a folder, a split model by its first part, projectors and partial files out."""
    out = []
    for p in sorted(folder.rglob("*")):
        name = p.name.lower()
        if not name.endswith(".gguf") or "mmproj" in name or not p.is_file():
            continue
        s = split_info(p.name)
        if s is None or s[1] == 1:
            out.append(p)
    return out


class Importer:
    def __init__(self, store: Store):
        self.store = store

    def register(self, path: Path, source: str, name: str | None = None, repo_id: str | None = None,
                 result: ImportResult | None = None) -> dict | None:
        """Validate one model file and register it where it is; None (and a skip reason) if it is not one."""
        result = result if result is not None else ImportResult()
        try:
            check_model_file(path)
        except (RuntimeFailure, OSError) as err:
            result.skipped.append({"path": str(path), "reason": str(err)})
            return None
        path = Path(os.path.abspath(path))  # keep a link's own name: split parts are found by name
        models = self.store.list_models()
        same = next((m for m in models if m["path"] == str(path)), None)
        if same is not None:
            result.registered.append(same)
            return same
        display = name or path.name
        base = slug(display[:-5] if display.lower().endswith(".gguf") else display)
        model_id = unique_id([base, slug(f"{source}-{base}")], str(path), {m["id"]: m["path"] for m in models})
        from tandem.runtime.gguf import split_parts

        size = sum(p.stat().st_size for p in split_parts(path))
        row = self.store.upsert_model({
            "id": model_id, "name": display, "path": str(path), "source": f"import:{source}", "size_bytes": size,
            "is_default": 0, "repo_id": repo_id, "quant": quant_of(path.name) or quant_of(display), "owned": 0})
        result.registered.append(row)
        return row

    def import_path(self, target: Path) -> ImportResult:
        """A .gguf file, or every GGUF under a folder."""
        target = Path(target).expanduser()
        if not target.exists():
            raise InvalidRequest(f"{target} does not exist. Give a .gguf file or a folder that holds some.")
        result = ImportResult()
        files = [target] if target.is_file() else _first_parts(target)
        if not files:
            raise InvalidRequest(f"No .gguf files under {target}.")
        for f in files:
            self.register(f, "file", result=result)
        return result

    def import_source(self, source: str) -> ImportResult:
        if source == "hf-cache":
            return self.import_hf_cache(hf_cache_dir())
        if source == "lmstudio":
            return self.import_lmstudio(next((d for d in lmstudio_dirs() if d.is_dir()), lmstudio_dirs()[0]))
        if source == "ollama":
            return self.import_ollama(next((d for d in ollama_dirs() if d.is_dir()), ollama_dirs()[0]))
        raise InvalidRequest(f"Import from one of {', '.join(SOURCES)}, not {source!r}.")

    def import_hf_cache(self, cache: Path) -> ImportResult:
        """models--owner--name/snapshots/<commit>/<file>.gguf (links into blobs/), newest snapshot."""
        if not cache.is_dir():
            raise InvalidRequest(f"No Hugging Face cache at {cache}. Set HF_HUB_CACHE or HF_HOME if it is elsewhere.")
        result = ImportResult()
        for repo in sorted(cache.glob("models--*--*")):
            repo_id = "/".join(repo.name.split("--", 2)[1:])
            snapshots = sorted((repo / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime, reverse=True)
            seen: set[str] = set()
            for snap in snapshots:
                for f in _first_parts(snap):
                    rel = f.relative_to(snap).as_posix()
                    if rel not in seen:
                        seen.add(rel)
                        self.register(f, "hf-cache", repo_id=repo_id, result=result)
        return result

    def import_lmstudio(self, root: Path) -> ImportResult:
        """<root>/<publisher>/<repo>/<file>.gguf"""
        if not root.is_dir():
            raise InvalidRequest(f"No LM Studio models folder at {root}. Set LMSTUDIO_MODELS_DIR if it is elsewhere.")
        result = ImportResult()
        for f in _first_parts(root):
            rel = f.relative_to(root).parts
            repo_id = f"{rel[0]}/{rel[1]}" if len(rel) >= 3 else None
            self.register(f, "lmstudio", repo_id=repo_id, result=result)
        return result

    def import_ollama(self, root: Path) -> ImportResult:
        """manifests/<registry>/<namespace>/<model>/<tag> name the model's GGUF blob by digest."""
        manifests = root / "manifests"
        if not manifests.is_dir():
            raise InvalidRequest(f"No Ollama models at {root}. Set OLLAMA_MODELS if they are elsewhere.")
        result = ImportResult()
        for manifest in sorted(p for p in manifests.rglob("*") if p.is_file()):
            rel = manifest.relative_to(manifests).parts
            name = f"{rel[-2]}:{rel[-1]}" if len(rel) >= 2 else rel[-1]
            if len(rel) >= 3 and rel[-3] != "library":
                name = f"{rel[-3]}/{name}"
            try:
                layers = json.loads(manifest.read_text())["layers"]
                layer = next(x for x in layers if x.get("mediaType") == OLLAMA_MODEL)
            except (OSError, ValueError, KeyError, TypeError, StopIteration):
                result.skipped.append({"path": str(manifest), "reason": "not an Ollama model manifest"})
                continue
            m = DIGEST.match(str(layer.get("digest", "")))
            if not m:
                result.skipped.append({"path": str(manifest), "reason": f"digest {layer.get('digest')!r} is not a SHA-256"})
                continue
            blob = root / "blobs" / f"sha256-{m[1]}"
            self.register(blob, "ollama", name=name, result=result)
        return result
