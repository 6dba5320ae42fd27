"""A remote model as the scheduler and the routes see a loaded one: submit() streams the reply
from the server's /chat/completions (or /completions for a raw prompt) on a thread of its own
and emits the engine's events; cancelling closes the request."""

from __future__ import annotations

import json
import ssl
import threading
import time
from dataclasses import dataclass, field

import httpx

from tandem.runtime.engine import Failed, Finished, ReplyStats, ReplyStream, SamplingParams, Started, Token
from tandem.runtime.engine.stream import Embedded
from tandem.runtime.errors import RuntimeFailure


_TLS: ssl.SSLContext | None = None


def tls_context() -> ssl.SSLContext:
    """One verifying TLS context for every request to a remote: httpx would build a new one per
    client (certificates loaded again, milliseconds a request), on cores a local model shares."""
    global _TLS
    if _TLS is None:
        _TLS = ssl.create_default_context()
    return _TLS


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
        self.signature = ""  # the registration it was made from (RemoteService.signature)
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
        reply = _Reply()
        where = f"{self.remote} ({self.url})"
        try:
            with httpx.Client(timeout=self._timeout, verify=tls_context()) as client:
                stream.on_cancel(client.close)  # Stop: the request ends, and with it the server's work
                with client.stream("POST", self.url + path, json=body, headers=self._headers) as resp:
                    if resp.status_code != 200:
                        raise RemoteFailure(_refusal(where, resp))
                    stream.emit(Started(0, policy="remote"))
                    for line in _lines(resp):
                        if stream.cancelled:
                            reply.finish = "cancelled"
                            break
                        if reply.take(line, raw, where, stream):
                            break
                    if not reply.ended and not stream.cancelled:
                        raise RemoteFailure(f"{where} broke off mid-reply (the stream ended before the reply did).")
            self.error = None
            stream.emit(Finished("".join(reply.pieces), reply.finish, reply.stats(submitted)))
        except RemoteFailure as err:
            self._fail(stream, str(err))
        except httpx.TimeoutException:
            if stream.cancelled:
                stream.emit(Finished("".join(reply.pieces), "cancelled", reply.stats(submitted)))
            else:
                self._fail(stream, f"{where} went silent for {self._timeout.read:.0f} s. Try again, or check that server.")
        except Exception as err:  # noqa: BLE001 - whatever a server sends, the reply ends with a word
            if stream.cancelled:
                stream.emit(Finished("".join(reply.pieces), "cancelled", reply.stats(submitted)))
            else:
                self._fail(stream, f"{where} could not be reached or broke off: {_reason(err)}. "
                                   "Check that it runs and that the URL is right.")
        finally:
            with self._lock:
                self._running -= 1

    def _fail(self, stream: ReplyStream, message: str) -> None:
        message = self.scrub(message)
        self.error = message
        stream.emit(Failed(RemoteFailure(message)))

    def scrub(self, text: str) -> str:
        """Text without this server's key, whatever echoed it."""
        key = self._headers.get("Authorization", "")[7:]
        return text.replace(key, "***") if key else text

    def embed(self, texts: list[str], loop=None, truncate: bool = False) -> ReplyStream:
        stream = ReplyStream(loop)

        def run():
            where = f"{self.remote} ({self.url})"
            try:
                with httpx.Client(timeout=self._timeout, verify=tls_context()) as client:
                    stream.on_cancel(client.close)
                    with client.stream("POST", self.url + "/embeddings", json={"model": self.model, "input": texts},
                                       headers=self._headers) as resp:
                        if resp.status_code != 200:
                            raise RemoteFailure(_refusal(where, resp))
                        body = json.loads(_body(resp, MAX_BODY))
                data = body["data"]
                vectors = tuple(tuple(float(x) for x in d["embedding"]) for d in sorted(data, key=lambda d: int(d["index"])))
                if len(vectors) != len(texts):
                    raise RemoteFailure(f"{where} answered {len(vectors)} embeddings for {len(texts)} inputs.")
                usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
                tokens = usage.get("prompt_tokens")
                stream.emit(Embedded(vectors, tokens if isinstance(tokens, int) and 0 <= tokens < 2**31 else 0))
            except RemoteFailure as err:
                self._fail(stream, str(err))
            except Exception as err:  # noqa: BLE001 - a malformed answer is the server's failure, said so
                if stream.cancelled:
                    stream.emit(Finished("", "cancelled", _no_stats()))
                else:
                    self._fail(stream, f"{where} could not embed: {_reason(err)}.")

        threading.Thread(target=run, name=f"remote:{self.remote}", daemon=True).start()
        return stream


MAX_LINE = 1 << 20  # one server-sent event line; more is not a reply's chunk
MAX_BODY = 64 << 20  # an embeddings answer or an error body


def _lines(resp: httpx.Response):
    """The response's lines, none longer than MAX_LINE (a longer one fails the reply)."""
    buffer = b""
    for chunk in resp.iter_bytes():
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line.rstrip(b"\r").decode("utf-8", "replace")
        if len(buffer) > MAX_LINE:
            raise RemoteFailure("The server sent a line longer than 1 MiB; that is not a reply.")
    if buffer:
        yield buffer.decode("utf-8", "replace")


def _body(resp: httpx.Response, cap: int) -> bytes:
    out = b""
    for chunk in resp.iter_bytes():
        out += chunk
        if len(out) > cap:
            raise RemoteFailure(f"The server's answer is larger than {cap >> 20} MiB.")
    return out


class _Reply:
    """What has come of one streamed reply."""

    def __init__(self):
        self.pieces: list[str] = []
        self.n_chunks, self.t_first, self.t_last, self.usage = 0, None, None, {}
        self.finish, self.ended = "stop", False  # ended: [DONE] or a finish reason came

    def take(self, line: str, raw: bool, where: str, stream: ReplyStream) -> bool:
        """One line of the event stream; True at [DONE]."""
        if not line.startswith("data:"):
            return False
        data = line[5:].strip()
        if data == "[DONE]":
            self.ended = True
            return True
        chunk = json.loads(data)
        if not isinstance(chunk, dict):
            raise RemoteFailure(f"{where} sent something that is not a reply chunk.")
        if "error" in chunk:
            err = chunk["error"]
            message = err.get("message", "") if isinstance(err, dict) else err
            raise RemoteFailure(f"{where} failed mid-reply: {str(message)[:300]}")
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
            text = choice.get("text") if raw else delta.get("content")
            if isinstance(text, str) and text:
                self.n_chunks += 1
                self.t_last = time.perf_counter()
                self.t_first = self.t_first or self.t_last
                self.pieces.append(text)
                stream.emit(Token(text))
            if choice.get("finish_reason"):
                self.ended = True
                self.finish = "length" if choice["finish_reason"] == "length" else "stop"
        return False

    def stats(self, submitted: float) -> ReplyStats:
        def count(name: str) -> int | None:
            v = self.usage.get(name)
            return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**31 else None

        out = count("completion_tokens")
        n_out = out if out is not None and out >= self.n_chunks else self.n_chunks
        decode = None
        if self.t_first is not None and n_out >= 2 and self.t_last > self.t_first:
            decode = (n_out - 1) / (self.t_last - self.t_first)
        return ReplyStats(prompt_tokens=count("prompt_tokens") or 0, completion_tokens=n_out, cached_tokens=0,
                          queue_s=0.0, ttft_s=None if self.t_first is None else self.t_first - submitted,
                          decode_tps=decode, total_s=time.perf_counter() - submitted, spec_source="remote")


def _no_stats() -> ReplyStats:
    return ReplyStats(prompt_tokens=0, completion_tokens=0, cached_tokens=0, queue_s=0.0, ttft_s=None,
                      decode_tps=None, total_s=0.0)


def _reason(err: Exception) -> str:
    if isinstance(err, httpx.LocalProtocolError):  # its text may hold the request's headers (the key)
        return "the request could not be sent (is the key a single line?)"
    text = str(err) or type(err).__name__
    return text.splitlines()[0][:200]


def _refusal(where: str, resp: httpx.Response) -> str:
    """What a server's error answer says, without anything of the request (its key)."""
    try:
        body = json.loads(_body(resp, 1 << 20))
        err = body.get("error") if isinstance(body, dict) else None
        message = err.get("message") if isinstance(err, dict) else err if isinstance(err, str) else None
    except Exception:  # noqa: BLE001 - an unreadable error body: the status says enough
        message = None
    if resp.status_code in (401, 403):
        return f"{where} refused the key (HTTP {resp.status_code}). Set its key with `tandem remote add` again."
    detail = f": {str(message)[:300]}" if message else ""
    return f"{where} answered HTTP {resp.status_code}{detail}."
