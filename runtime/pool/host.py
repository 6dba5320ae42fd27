"""A process that holds one model whose layers are spread over ggml-rpc workers, run by the main
process (runtime.pool.client.PooledWorker) and spoken to over its stdin and stdout in JSON lines.

It is a process of its own because ggml-rpc ends the process that uses it when a worker goes away
mid-graph: here that ends this host, and the main process reports it and carries on.

stdin, one JSON object a line: first the spec {"params": LoadParams fields, "max_queue", "max_reply",
"saved_states": a directory for conversations' saved caches or null, "saved_cap_bytes"}; then
{"op": "submit", "id", "messages", "sampling", "policy", "key", "evicted", "speculative", "raw",
"tools"}, {"op": "embed", "id", "texts", "truncate"}, {"op": "cancel", "id"}, {"op": "forget", "key"}.
End of input: unload (saving the caches) and exit.
stdout: {"op": "ready", "n_ctx", "metadata", "supports_tools", "load_s"} or {"op": "error", "error"},
then {"op": "event", "id", "event"} for each event of each request.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from dataclasses import fields
from pathlib import Path


def main() -> int:
    out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # llama.cpp's and ggml's prints go to stderr: stdout is the protocol's alone
    lock = threading.Lock()

    def send(obj: dict) -> None:
        line = json.dumps(obj, ensure_ascii=True)
        with lock:
            out.write(line + "\n")
            out.flush()

    from tandem.runtime.engine import Failed, LoadParams, ModelWorker, SamplingParams
    from tandem.runtime.engine.worker import DEFAULT_STATE_CAP
    from tandem.runtime.errors import InvalidSampling, RuntimeFailure
    from tandem.runtime.engine.context import ContextPolicy
    from tandem.runtime.pool.wire import encode_error, encode_event

    spec = json.loads(sys.stdin.readline() or "{}")
    p = dict(spec.get("params") or {})
    if p.get("tensor_split"):
        p["tensor_split"] = tuple(p["tensor_split"])
    saved = spec.get("saved_states")
    try:
        worker = ModelWorker.open(LoadParams(**p), max_queue=spec.get("max_queue", 16),
                                  max_reply=spec.get("max_reply", 8192), saved_states=Path(saved) if saved else None,
                                  saved_cap_bytes=int(spec.get("saved_cap_bytes") or DEFAULT_STATE_CAP))
    except BaseException as err:  # noqa: BLE001 - every load failure is reported, then the host ends
        send({"op": "error", "error": encode_error(err)})
        return 1
    send({"op": "ready", "n_ctx": worker.n_ctx, "metadata": worker.metadata,
          "supports_tools": worker.supports_tools, "load_s": worker.load_s})
    streams: dict[int, object] = {}
    relays: list[threading.Thread] = []
    sampling_fields = {f.name for f in fields(SamplingParams)}

    def relay(rid: int, stream) -> None:
        for event in stream:
            send({"op": "event", "id": rid, "event": encode_event(event)})
        streams.pop(rid, None)

    def submit(msg: dict) -> None:
        rid = msg["id"]
        try:
            s = {k: v for k, v in (msg.get("sampling") or {}).items() if k in sampling_fields}
            for k in ("stop", "logit_bias"):
                if k in s:
                    s[k] = tuple(tuple(x) if isinstance(x, list) else x for x in s[k])
            stream = worker.submit(msg.get("messages") or [], SamplingParams(**s),
                                   overflow=ContextPolicy(**(msg.get("policy") or {})), key=msg.get("key"),
                                   evicted=tuple(msg.get("evicted") or ()), speculative=msg.get("speculative", "off"),
                                   raw=bool(msg.get("raw")), tools=msg.get("tools"))
        except Exception as err:  # noqa: BLE001 - one bad request fails alone, the model stays
            failure = err if isinstance(err, RuntimeFailure) else InvalidSampling(f"Refused by the pooled model: {err}")
            send({"op": "event", "id": rid, "event": encode_event(Failed(failure))})
            return
        start(rid, stream)

    def embed(msg: dict) -> None:
        texts = msg.get("texts")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            send({"op": "event", "id": msg["id"], "event": encode_event(Failed(InvalidSampling("texts: a list of strings")))})
            return
        start(msg["id"], worker.embed(texts, truncate=bool(msg.get("truncate"))))

    def start(rid: int, stream) -> None:
        streams[rid] = stream
        t = threading.Thread(target=relay, args=(rid, stream), daemon=True)
        relays.append(t)
        t.start()

    for line in sys.stdin:
        try:
            msg = json.loads(line)
            op = msg.get("op")
            if op == "submit":
                submit(msg)
            elif op == "embed":
                embed(msg)
            elif op == "cancel":
                stream = streams.get(msg.get("id"))
                if stream is not None:
                    stream.cancel()
            elif op == "forget":
                worker.forget(msg.get("key"))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # a malformed line from the main process: nothing to answer
    worker.close()  # running replies end (cancelled), waiting ones are told: their relays send that
    for t in relays:
        t.join(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
