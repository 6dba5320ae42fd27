"""The engine's events and errors as JSON lines, between a pool host process and the main process."""

from __future__ import annotations

from dataclasses import asdict, fields

from tandem.runtime import errors
from tandem.runtime.engine.stream import (
    Embedded, Failed, Finished, Progress, Queued, ReplyStats, Started, Token, TokenLogprob,
)

_PLAIN = {c.__name__: c for c in (Started, Progress, Queued, Token, Embedded)}


def encode_error(err: BaseException) -> dict:
    attrs = {k: v for k, v in vars(err).items() if isinstance(v, (str, int, float, bool, type(None)))}
    return {"class": type(err).__name__, "message": str(err), "code": getattr(err, "code", "runtime_error"),
            "attrs": attrs}


def decode_error(d: dict) -> errors.RuntimeFailure:
    """The same RuntimeFailure subclass with the same message and attributes (routes map errors by
    class and code), or a RuntimeFailure carrying the code."""
    cls = getattr(errors, str(d.get("class")), None)
    if not (isinstance(cls, type) and issubclass(cls, errors.RuntimeFailure)):
        cls = errors.RuntimeFailure
    err = cls.__new__(cls)
    Exception.__init__(err, str(d.get("message", "")))
    for k, v in (d.get("attrs") or {}).items():
        setattr(err, k, v)
    if cls is errors.RuntimeFailure and d.get("code"):
        err.code = d["code"]
    return err


def encode_event(event) -> dict:
    name = type(event).__name__
    if isinstance(event, Failed):
        return {"type": name, "error": encode_error(event.error)}
    if isinstance(event, Finished):
        d = {"type": name, "text": event.text, "finish_reason": event.finish_reason,
             "stats": asdict(event.stats), "dropped": list(event.dropped), "tokens": list(event.tokens)}
        if event.logprobs is not None:
            d["logprobs"] = [{"token": p.token, "piece": p.piece.hex(), "logprob": p.logprob,
                              "top": [[t, b.hex(), lp] for t, b, lp in p.top]} for p in event.logprobs]
        return d
    return {"type": name, **asdict(event)}


def decode_event(d: dict):
    name = d.get("type")
    if name == "Failed":
        return Failed(decode_error(d.get("error") or {}))
    if name == "Finished":
        logprobs = None
        if d.get("logprobs") is not None:
            logprobs = tuple(TokenLogprob(p["token"], bytes.fromhex(p["piece"]), p["logprob"],
                                          tuple((t, bytes.fromhex(b), lp) for t, b, lp in p["top"]))
                             for p in d["logprobs"])
        known = {f.name for f in fields(ReplyStats)}
        stats = ReplyStats(**{k: v for k, v in d["stats"].items() if k in known})
        return Finished(d["text"], d["finish_reason"], stats, tuple(d.get("dropped") or ()),
                        tuple(d.get("tokens") or ()), logprobs)
    cls = _PLAIN[name]
    kw = {k: v for k, v in d.items() if k != "type"}
    if cls is Started:
        kw["dropped"] = tuple(kw.get("dropped") or ())
    if cls is Embedded:
        kw["vectors"] = tuple(tuple(v) for v in kw["vectors"])
    return cls(**kw)
