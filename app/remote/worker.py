"""A remote model as the scheduler and the routes see a loaded one: submit() streams the reply
from the server's /chat/completions (or /completions for a raw prompt) on a thread of its own
and emits the engine's events; cancelling closes the request."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

import httpx

from tandem.runtime.engine import Failed, Finished, ReplyStats, ReplyStream, SamplingParams, Started, Token
from tandem.runtime.engine.stream import Embedded
from tandem.runtime.errors import RuntimeFailure


class RemoteFailure(RuntimeFailure):
    """A remote server refused, failed or went silent. The message names the server, never its key."""

    code = "remote_failed"


@dataclass(frozen=True)
class RemotePlan:
    """What the routes read from a plan, for a model that runs elsewhere: nothing is predicted."""

    decode_tps: float | None = None
    speculative: str = "none"
    context_policy: str = "stop"
    n_ctx: int | None = None
    sink_tokens: int = 4
    evict_chunk: int = 256


@dataclass(frozen=True)
class RemoteServed:
    """A remote model held by the scheduler (the counterpart of a ServedModel)."""

    id: str  # NAME/model
    name: str
    worker: "RemoteWorker"
    remote: str
    plan: RemotePlan = field(default_factory=RemotePlan)

    def describe(self) -> dict:
        return {"id": self.id, "name": self.name, "remote": self.remote, "n_ctx": None, "predicted_tps": None,
                "context_policy": "stop"}


class RemoteWorker:
    """Requests to one model of one remote server. Stateless between requests: it is "loaded"
    while the server answers."""

    def __init__(self, remote: str, url: str, model: str, key: str | None, timeout_s: float):
        self.remote, self.url, self.model = remote, url.rstrip("/"), model
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._timeout = httpx.Timeout(connect=min(10.0, timeout_s), read=timeout_s, write=timeout_s, pool=timeout_s)
        self._lock = threading.Lock()
        self._running = 0
        self.closed = False
        self.error: str | None = None
        self.load_s = 0.0
        self.supports_tools = True  # the server decides; its refusal comes back as its error
        self.n_ctx = None
        self.metadata: dict[str, str] = {}

    # --- what the scheduler asks of a worker
    def status(self) -> dict:
        return {"state": "busy" if self._running else "idle", "queued": 0, "running": self._running > 0,
                "error": self.error}

    def close(self, timeout: float = 10.0) -> None:
        self.closed = True

    def forget(self, key: str) -> None:
        pass  # nothing of a conversation is kept here

    # --- requests
    def submit(self, messages: list[dict], sampling: SamplingParams | None = None, loop=None, raw: bool = False,
               tools: list[dict] | None = None, **_ignored) -> ReplyStream:
        """Stream a reply from the server. Context policies, saved caches and speculative decoding
        are the remote server's business: those arguments are accepted and not used."""
        stream = ReplyStream(loop)
        sampling = sampling or SamplingParams()
        if raw:
            path = "/completions"
            body = {"prompt": messages[0]["content"]}
        else:
            path = "/chat/completions"
            body = {"messages": messages}
            if tools:
                body["tools"] = list(tools)
        body.update(model=self.model, stream=True, stream_options={"include_usage": True},
                    temperature=sampling.temperature, top_p=sampling.top_p)
        if sampling.max_tokens:
            body["max_tokens"] = sampling.max_tokens
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        threading.Thread(target=self._run, args=(path, body, stream, raw), name=f"remote:{self.remote}",
                         daemon=True).start()
        return stream

    def _run(self, path: str, body: dict, stream: ReplyStream, raw: bool) -> None:
        submitted = time.perf_counter()
        with self._lock:
            self._running += 1
        pieces, n_chunks, t_first, t_last, usage, finish = [], 0, None, None, None, "stop"
        ended = False  # [DONE] or a finish reason came: a stream that stops before is cut off
        where = f"{self.remote} ({self.url})"
        try:
            with httpx.Client(timeout=self._timeout) as client:
                with client.stream("POST", self.url + path, json=body, headers=self._headers) as resp:
                    stream.on_cancel(resp.close)  # Stop: the request ends, and with it the server's work
                    if resp.status_code != 200:
                        raise RemoteFailure(_refusal(where, resp))
                    stream.emit(Started(0, policy="remote"))
                    for line in resp.iter_lines():
                        if stream.cancelled:
                            finish = "cancelled"
                            break
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            ended = True
                            break
                        chunk = json.loads(data)
                        if "error" in chunk:
                            err = chunk["error"]
                            raise RemoteFailure(f"{where} failed mid-reply: {err.get('message', err) if isinstance(err, dict) else err}")
                        usage = chunk.get("usage") or usage
                        for choice in chunk.get("choices") or []:
                            text = choice.get("text") if raw else (choice.get("delta") or {}).get("content")
                            if text:
                                n_chunks += 1
                                t_last = time.perf_counter()
                                t_first = t_first or t_last
                                pieces.append(text)
                                stream.emit(Token(text))
                            if choice.get("finish_reason"):
                                ended = True
                                finish = "length" if choice["finish_reason"] == "length" else "stop"
                    if not ended and not stream.cancelled:
                        raise RemoteFailure(f"{where} broke off mid-reply (the stream ended before the reply did).")
            self.error = None
        except RemoteFailure as err:
            self.error = str(err)
            stream.emit(Failed(err))
            return
        except httpx.TimeoutException:
            if stream.cancelled:
                finish = "cancelled"
            else:
                self.error = f"{where} went silent for {self._timeout.read:.0f} s."
                stream.emit(Failed(RemoteFailure(self.error + " Try again, or check that server.")))
                return
        except (httpx.HTTPError, httpx.StreamError, ValueError, OSError) as err:
            if not stream.cancelled:
                self.error = f"{where} could not be reached or broke off: {_reason(err)}."
                stream.emit(Failed(RemoteFailure(self.error + " Check that it runs and that the URL is right.")))
                return
            finish = "cancelled"
        finally:
            with self._lock:
                self._running -= 1
        out = usage.get("completion_tokens") if isinstance(usage, dict) else None
        n_out = out if isinstance(out, int) and out >= n_chunks else n_chunks
        decode = (n_out - 1) / (t_last - t_first) if t_first is not None and n_out >= 2 and t_last > t_first else None
        prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        stats = ReplyStats(prompt_tokens=prompt if isinstance(prompt, int) else 0, completion_tokens=n_out,
                           cached_tokens=0, queue_s=0.0, ttft_s=None if t_first is None else t_first - submitted,
                           decode_tps=decode, total_s=time.perf_counter() - submitted, spec_source="remote")
        stream.emit(Finished("".join(pieces), finish, stats))

    def embed(self, texts: list[str], loop=None, truncate: bool = False) -> ReplyStream:
        stream = ReplyStream(loop)

        def run():
            try:
                with httpx.Client(timeout=self._timeout) as client:
                    resp = client.post(self.url + "/embeddings", json={"model": self.model, "input": texts},
                                       headers=self._headers)
                if resp.status_code != 200:
                    raise RemoteFailure(_refusal(f"{self.remote} ({self.url})", resp))
                body = resp.json()
                vectors = tuple(tuple(d["embedding"]) for d in sorted(body["data"], key=lambda d: d["index"]))
                stream.emit(Embedded(vectors, int((body.get("usage") or {}).get("prompt_tokens") or 0)))
            except RemoteFailure as err:
                stream.emit(Failed(err))
            except (httpx.HTTPError, ValueError, KeyError, TypeError, OSError) as err:
                stream.emit(Failed(RemoteFailure(f"{self.remote} could not embed: {_reason(err)}.")))

        threading.Thread(target=run, name=f"remote:{self.remote}", daemon=True).start()
        return stream


def _reason(err: Exception) -> str:
    text = str(err) or type(err).__name__
    return text.splitlines()[0][:200]


def _refusal(where: str, resp: httpx.Response) -> str:
    """What a server's error answer says, without anything of the request (its key)."""
    try:
        resp.read()
        body = resp.json()
        err = body.get("error") if isinstance(body, dict) else None
        message = err.get("message") if isinstance(err, dict) else err if isinstance(err, str) else None
    except (ValueError, httpx.HTTPError):
        message = None
    if resp.status_code in (401, 403):
        return f"{where} refused the key (HTTP {resp.status_code}). Set its key with `tandem remote add` again."
    detail = f": {str(message)[:300]}" if message else ""
    return f"{where} answered HTTP {resp.status_code}{detail}."
