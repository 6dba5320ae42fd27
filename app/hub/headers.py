"""What a model on the hub needs, from its GGUF header alone, fetched with HTTP Range requests.

A header (metadata, tokenizer, tensor table) is a few MB at most at the front of a file of GBs.
The first request asks for a prefix; when the header goes on past it (HeaderIncomplete says
where), only the missing bytes are fetched, with room to spare so that a large tokenizer costs
two or three requests, not dozens. The ModelInfo is kept in SQLite under the files' SHA-256 (the
content, so it never goes stale): a repo opened again is judged without a network request.
"""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import ThreadPoolExecutor

from tandem.app.hub.client import HubClient, HubError
from tandem.app.hub.names import RemoteModel
from tandem.app.store import Store
from tandem.runtime.errors import InvalidModelFile
from tandem.runtime.gguf import HeaderIncomplete, header_from_bytes
from tandem.runtime.model_info import ModelInfo, describe

FIRST_READ = 512 * 1024
LATER_PART_READ = 128 * 1024  # parts after the first hold a tensor table, no tokenizer
MAX_HEADER = 64 * 1024 * 1024  # a header past this is a hostile or broken file
_TUPLES = {f.name for f in dataclasses.fields(ModelInfo) if "tuple" in str(f.type)}


def info_to_json(info: ModelInfo) -> str:
    d = dataclasses.asdict(info)
    return json.dumps(d)


def info_from_json(text: str) -> ModelInfo:
    d = json.loads(text)
    known = {f.name for f in dataclasses.fields(ModelInfo)}
    return ModelInfo(**{k: (tuple(v) if k in _TUPLES and v is not None else v) for k, v in d.items() if k in known})


def cache_key(model: RemoteModel, repo_id: str, commit: str | None) -> str:
    """The files' SHA-256 when the hub gives it (content: valid forever), else repo@commit/name."""
    if all(f.sha256 for f in model.files):
        return "sha256:" + ",".join(f.sha256 for f in model.files)
    return f"{repo_id}@{commit}/" + ",".join(f.name for f in model.files)


class RemoteInspector:
    def __init__(self, client: HubClient, store: Store, workers: int = 8):
        self.client, self.store, self.workers = client, store, workers
        self._sizes: dict[str, int] = {}  # repo -> bytes the last header read there needed

    def inspect(self, repo_id: str, commit: str | None, model: RemoteModel,
                first_read: int = FIRST_READ) -> tuple[ModelInfo, int]:
        """(ModelInfo, bytes fetched: 0 when cached) for one model of a repo."""
        key = cache_key(model, repo_id, commit)
        cached = self.store.cached_header(key)
        if cached is not None:
            return info_from_json(cached["info_json"]), 0
        headers, fetched = [], 0
        for i, f in enumerate(model.files):
            url, size, _ = self.client.file_location(repo_id, f.name, commit)
            header, n = self._read_header(url, f.name, f.size or size, i, first_read if i == 0 else LATER_PART_READ)
            headers.append(header)
            fetched += n
            if i == 0:
                self._sizes[repo_id] = header.data_offset + header.data_offset // 16 + 4096
        info = describe(headers, None, model.size or None)
        self.store.cache_header(key, repo_id, model.key, model.size, fetched, info_to_json(info))
        return info, fetched

    def inspect_all(self, repo_id: str, commit: str | None, models: list[RemoteModel]) -> list[tuple]:
        """(model, ModelInfo or None, bytes fetched, the exception or None) for each model, in parallel."""
        def one(m: RemoteModel, first_read: int = FIRST_READ):
            try:
                info, n = self.inspect(repo_id, commit, m, first_read)
                return m, info, n, None
            except (HubError, InvalidModelFile) as err:
                return m, None, 0, err

        if len(models) <= 1:
            return [one(m) for m in models]
        # The files of a repo share a tokenizer, so one header's size foretells the others': read
        # one first, then the rest in parallel each with a single request of about that size
        # (a header parsed again after every short read costs more CPU than its bytes).
        first = one(models[0])
        hint = self._sizes.get(repo_id, FIRST_READ)
        with ThreadPoolExecutor(min(self.workers, len(models) - 1)) as pool:
            return [first, *pool.map(lambda m: one(m, hint), models[1:])]

    def _read_header(self, url: str, name: str, size: int | None, part: int, first_read: int):
        data = self.client.read_range(url, 0, min(first_read, size or first_read))
        while True:
            try:
                header = header_from_bytes(data, name, size)
                return (header if part == 0 else dataclasses.replace(
                    header, tensors=tuple(dataclasses.replace(t, part=part) for t in header.tensors))), len(data)
            except HeaderIncomplete as err:
                if size is not None and len(data) >= size:
                    raise InvalidModelFile(f"{name} ends inside its header; the file on the hub is damaged.") from None
                want = max(err.need + err.need // 2, 2 * len(data))
                if size is not None:
                    want = min(want, size)
                if want > MAX_HEADER:
                    raise InvalidModelFile(f"{name} claims a header of over {MAX_HEADER >> 20} MB; Tandem refused it.") from None
                more = self.client.read_range(url, len(data), want)
                if not more:
                    raise InvalidModelFile(f"{name} ends inside its header; the file on the hub is damaged.") from None
                data += more
