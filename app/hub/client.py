"""The Hugging Face hub through huggingface_hub: search, a repo's files, a file's address, byte ranges.

huggingface_hub reads HF_ENDPOINT once, when it is imported; the endpoint and token are read here
at every call instead, so a mirror (or the tests' local hub) set later is honoured. Its errors
become HubError messages that say what to do (a gated repo: which token, where to set it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import httpx2
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError, HfHubHTTPError, OfflineModeIsEnabled, RemoteEntryNotFoundError, RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import get_session

from tandem.app.errors import TandemError
from tandem.app.hub.names import RemoteFile, check_repo_id

DEFAULT_ENDPOINT = "https://huggingface.co"
SORTS = {"downloads": "downloads", "likes": "likes", "recent": "last_modified", "trending": "trending_score"}
TIMEOUT = 20.0


class HubError(TandemError):
    status = 502
    code = "hub_error"


class HubUnreachable(HubError):
    code = "hub_unreachable"


class HubNotFound(HubError):
    status = 404
    code = "hub_not_found"


class GatedRepo(HubError):
    status = 403
    code = "gated_repo"


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def token() -> str | None:
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


@dataclass
class RepoListing:
    repo_id: str
    commit: str | None  # the revision's commit: downloads pin it, so a file cannot change under them
    gated: bool
    files: list[RemoteFile]
    downloads: int | None = None
    likes: int | None = None


def translate(err: Exception, what: str) -> HubError:
    """A huggingface_hub or network error as a HubError a person can act on."""
    if isinstance(err, HubError):
        return err
    if isinstance(err, GatedRepoError):
        return GatedRepo(
            f"{what} is gated: accept its terms on the model's page on the hub, then create an access token "
            "(Settings > Access Tokens) and set it as HF_TOKEN in Tandem's environment.")
    if isinstance(err, RepositoryNotFoundError):
        extra = "" if token() else " If it is private, set HF_TOKEN to a token that may read it."
        return HubNotFound(f"{what} was not found on the hub ({endpoint()}). Check the name.{extra}")
    if isinstance(err, RevisionNotFoundError):
        return HubNotFound(f"{what}: that revision does not exist on the hub.")
    if isinstance(err, RemoteEntryNotFoundError):
        return HubNotFound(f"{what} is not in the repo (any more). Open the repo again to see its files.")
    if isinstance(err, HfHubHTTPError):
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403):
            return GatedRepo(f"{what}: the hub refused access ({status}). Set HF_TOKEN to a token that may read it.")
        return HubError(f"{what}: the hub answered {status}. Try again later.")
    if isinstance(err, OfflineModeIsEnabled):
        return HubUnreachable("HF_HUB_OFFLINE is set, so Tandem does not reach the hub. Unset it to search and download.")
    if isinstance(err, (httpx2.TransportError, OSError)):
        return HubUnreachable(
            f"The hub at {endpoint()} cannot be reached ({type(err).__name__}). Check the network, or set "
            "HF_ENDPOINT to a mirror. Installed and imported models work offline.")
    return HubError(f"{what}: {err}")


class HubClient:
    def api(self) -> HfApi:
        return HfApi(endpoint=endpoint(), token=token())

    def search(self, query: str, sort: str = "downloads", limit: int = 30) -> list[dict]:
        """GGUF repos matching `query`, most downloaded (or liked, recent, trending) first."""
        if sort not in SORTS:
            raise HubError(f"Sort by one of {', '.join(SORTS)}, not {sort!r}.")
        self._reachable()
        try:
            found = self.api().list_models(search=query or None, filter="gguf", sort=SORTS[sort], limit=limit)
            return [{"id": m.id, "downloads": m.downloads, "likes": m.likes, "gated": bool(m.gated),
                     "updated": m.last_modified.isoformat() if m.last_modified else None,
                     "tags": list(m.tags or [])[:12]} for m in found]
        except Exception as err:
            raise translate(err, f"Search for {query!r}") from err

    def _reachable(self) -> None:
        """Fail at once when the hub does not answer: a search retries a dead network for ~20 s."""
        try:
            get_session().head(endpoint() + "/", timeout=5.0)
        except Exception as err:
            raise translate(err, "The hub") from err

    def repo(self, repo_id: str, revision: str | None = None) -> RepoListing:
        """A repo's files with sizes and LFS SHA-256, at one commit."""
        check_repo_id(repo_id)
        try:
            info = self.api().model_info(repo_id, revision=revision, files_metadata=True, timeout=TIMEOUT)
        except Exception as err:
            raise translate(err, repo_id) from err
        files = [RemoteFile(s.rfilename, s.lfs.size if s.lfs else s.size, s.lfs.sha256 if s.lfs else None)
                 for s in info.siblings or []]
        return RepoListing(repo_id, info.sha, bool(info.gated), files, info.downloads, info.likes)

    def file_location(self, repo_id: str, file_name: str, revision: str | None) -> tuple[str, int | None, str | None]:
        """(where the bytes are, size, etag) of a file: the hub answers a redirect to its CDN."""
        url = hf_hub_url(repo_id, file_name, revision=revision, endpoint=endpoint())
        try:
            meta = get_hf_file_metadata(url, token=token(), timeout=TIMEOUT, endpoint=endpoint())
        except Exception as err:
            raise translate(err, f"{repo_id}/{file_name}") from err
        return meta.location, meta.size, meta.etag

    def read_range(self, url: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of a file at a CDN address (no Authorization leaves for another host)."""
        headers = {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
        if token() and url.startswith(endpoint()):
            headers["Authorization"] = f"Bearer {token()}"
        try:
            with get_session().stream("GET", url, headers=headers, timeout=TIMEOUT, follow_redirects=True) as r:
                if r.status_code == 416:
                    return b""
                if r.status_code not in (200, 206):
                    raise HubError(f"Reading {url} failed: the server answered {r.status_code}. Try again later.")
                skip = start if r.status_code == 200 else 0  # a server without Range support sends it all
                data = bytearray()
                for chunk in r.iter_bytes():
                    data += chunk
                    if len(data) >= skip + (end - start):
                        break  # never read past what was asked for
                return bytes(data[skip:skip + end - start])
        except HubError:
            raise
        except Exception as err:
            raise translate(err, url) from err
