"""`tandem search`, `pull`, `models`, `rm` and `import`: the model manager on the command line."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path

from tandem.app.config import Settings
from tandem.app.hub.service import HubService
from tandem.app.hub.verdict import Verdict

GB = 1e9


@contextmanager
def open_hub(settings: Settings, run_all: bool = False):
    from tandem.app.services.hardware import HardwareService
    from tandem.app.services.models import ModelService
    from tandem.app.store import Store

    store = Store(settings.db_path)
    hardware = HardwareService(settings).profile
    models = ModelService(settings, store, hardware)
    try:
        # the built-in model (and TANDEM_MODEL) are installed models too, before the app first starts
        models.register_startup_models()
    except BaseException:
        store.close()
        raise
    finally:
        models.close()
    hub = HubService(settings, store, hardware, run_all=run_all)
    try:
        yield hub
    finally:
        hub.close()
        store.close()


def split_spec(spec: str) -> tuple[str, str | None]:
    """REPO[:QUANT|FILE] -> (repo, quant or file or None)."""
    repo, _, wanted = spec.partition(":")
    return repo, wanted or None


def verdict_line(v: dict | None) -> str:
    if not v:
        return "no verdict"
    return Verdict(**{k: v[k] for k in Verdict.__dataclass_fields__ if k in v}).summary()


def run_search(settings: Settings, query: str, sort: str, limit: int, as_json: bool) -> int:
    with open_hub(settings) as hub:
        found = hub.search(query, sort, limit)
    if as_json:
        print(json.dumps(found, indent=1))
        return 0
    if not found:
        print(f"No GGUF repos match {query!r}.")
        return 0
    for m in found:
        gated = "  (gated: needs HF_TOKEN)" if m["gated"] else ""
        print(f"{m['id']:<60} {m['downloads'] or 0:>10,} downloads {m['likes'] or 0:>6,} likes{gated}")
    print("\nSee a repo's files and how each runs here: tandem pull REPO (without a quant).")
    return 0


def print_repo(view: dict) -> None:
    print(f"{view['repo_id']} @ {(view['commit'] or '?')[:12]}")
    for m in view["models"]:
        mark = "*" if m.get("recommended") else " "
        quant = m["quant"] or "?"
        parts = f" ({m['parts']} parts)" if m["parts"] > 1 else ""
        line = verdict_line(m["verdict"]) if m["verdict"] else f"cannot judge: {m['error']}"
        print(f" {mark} {quant:<8} {m['size'] / GB:6.2f} GB{parts}  {line}")
    if view["recommended"]:
        print(f"   * recommended here: {view['recommended']}")


def run_pull(settings: Settings, spec: str, as_json: bool = False) -> int:
    repo_id, wanted = split_spec(spec)
    with open_hub(settings) as hub:
        if wanted is None:
            view = hub.repo(repo_id)
            print_repo(view)
            if not view["recommended"]:
                print("Nothing in this repo fits this machine.", file=sys.stderr)
                return 1
            wanted = view["recommended"]
        entry, status = hub.pull(repo_id, wanted)
        print(f"{entry['key']} ({entry['size'] / GB:.2f} GB): {verdict_line(entry.get('verdict'))}", flush=True)
        final = follow(hub, status)
        path = hub.store.get_model(final["model_id"])["path"] if final["status"] == "complete" else None
    if as_json:
        print(json.dumps(final, indent=1, default=str))
    if final["status"] == "complete":
        print(f"Installed as {final['model_id']}. Pick it in the app, or: tandem --model {path}")
        return 0
    if final["status"] == "paused":
        print(f"Paused{': ' + final['error'] if final.get('error') else ''}. Run the same command to resume.",
              file=sys.stderr)
        return 1
    print(f"tandem: error: the download {final['status']}: {final.get('error')}", file=sys.stderr)
    return 1


def follow(hub: HubService, status: dict) -> dict:
    """Wait for a download with a progress bar; Ctrl-C pauses it (the same command resumes)."""
    from tqdm import tqdm

    bar = tqdm(total=status["total_bytes"] or None, initial=status["done_bytes"] or 0, unit="B", unit_scale=True,
               unit_divisor=1024, dynamic_ncols=True, disable=None, file=sys.stderr)

    def tick(s: dict) -> None:
        bar.update(max(0, (s["done_bytes"] or 0) - bar.n))
        bar.set_postfix_str(s["status"], refresh=False)

    try:
        final = hub.downloads.wait(status["id"], tick=tick)
    except KeyboardInterrupt:
        final = hub.downloads.pause(status["id"])
    finally:
        bar.close()
    return final


def run_models(settings: Settings, as_json: bool) -> int:
    with open_hub(settings) as hub:
        rows = []
        for m in hub.installed():
            v = None if m["missing"] else hub.judge_installed(m)
            rows.append({**m, "verdict": v.to_dict() if v else None})
    if as_json:
        print(json.dumps(rows, indent=1, default=str))
        return 0
    for m in rows:
        if m["missing"]:
            state = f"MISSING ({', '.join(m['missing_files'])}): tandem pull {m['repo_id']}:{m['quant']} / tandem rm {m['id']}" \
                if m.get("repo_id") else f"MISSING: import it again from where it is now, or tandem rm {m['id']}"
        else:
            v = m["verdict"]
            state = f"{v['label']}, {v['decode_tps']:.1f} tokens/s" if v and v.get("decode_tps") else (
                v["label"] if v else "cannot be read")
        default = " (default)" if m["is_default"] else ""
        print(f"{m['id']}{default}\n    {m['quant'] or '-':<8} {m['size_bytes'] / GB:6.2f} GB  {m['source']:<16} {state}"
              f"\n    {m['path']}")
    return 0


def run_rm(settings: Settings, model_id: str) -> int:
    from tandem.app.errors import NotFound

    with open_hub(settings) as hub:
        try:
            done = hub.remove(model_id)
        except NotFound:
            known = ", ".join(m["id"] for m in hub.store.list_models()) or "none"
            raise NotFound(f"No installed model {model_id!r}. Installed: {known} (see `tandem models`).") from None
    files = f"; deleted {len(done['deleted_files'])} file(s)" if done["deleted_files"] else "; its files were left in place"
    print(f"Removed {model_id}{files}.")
    return 0


def run_import(settings: Settings, path: Path | None, source: str | None) -> int:
    with open_hub(settings) as hub:
        result = hub.import_path(path) if path is not None else hub.import_source(source)
    for m in result.registered:
        print(f"registered {m['id']}  {m['path']}")
    for s in result.skipped:
        print(f"skipped {s['path']}: {s['reason']}", file=sys.stderr)
    if not result.registered:
        print("No model was imported.", file=sys.stderr)
        return 1
    return 0
