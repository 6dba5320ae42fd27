"""Ollama-compatible endpoints, so the official `ollama` client and the tools built on it work
against Tandem unchanged (OLLAMA_HOST=http://127.0.0.1:8742).

They run on the same serving core as the OpenAI endpoints (the scheduler's lease, the reply
stream, the client watch). Where Ollama and Tandem differ:

- Model names are Tandem's model ids ("smollm2-135m-instruct-q4_1"); "id:latest" means the id,
  and a model pulled as hf.co/owner/repo:QUANT can be named that way too.
- Pulls come from Hugging Face only (hf.co/owner/repo:QUANT); Ollama's own library names have no
  mapping and are refused with a hint.
- What the engine cannot do is refused with Ollama's own 400 answers rather than ignored: tools,
  images, thinking, suffix (insert), custom templates.
- `format` ("json" or a JSON schema) is enforced with a llama.cpp grammar, so the reply parses.
- Embeddings are the mean of the tokens' last hidden states, unit length, for /api/embed and the
  older /api/embeddings alike.

Errors have Ollama's shape, {"error": "message"} with the HTTP status, which the client raises as
ResponseError; OllamaRoute turns every failure of these routes into that shape, request validation
included, so the app's own error handlers (Tandem's shape) never see them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
import time
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from tandem.app import __version__
from tandem.app.api.deps import HubDep, ModelsDep, SettingsDep, StoreDep, Utf8
from tandem.app.api.disconnect import ClientWatch, first_event
from tandem.app.api.embed import embed_texts
from tandem.app.api.errors import describe_validation, runtime_status
from tandem.app.errors import Conflict, NotFound, TandemError
from tandem.app.hub.service import installed_models
from tandem.app.remote.worker import RemoteWorker
from tandem.app.services.models import ServedModel
from tandem.runtime.engine import Failed, Finished, SamplingParams, Token
from tandem.runtime.engine.chat_format import CHATML_TEMPLATE
from tandem.runtime.engine.formats import schema_grammar
from tandem.runtime.errors import Interrupted, QueueFull, RuntimeFailure
from tandem.runtime.gguf import read_model_headers
from tandem.runtime.model_info import ModelInfo, inspect_model

log = logging.getLogger("tandem")

# Clients compare this loosely (structured outputs want >= 0.5); Tandem's own is beside it.
OLLAMA_VERSION = "0.5.0"
MAX_MESSAGES = 4096
MAX_CHARS = 1_000_000  # per text field: far past any context Tandem plans for
MAX_NAME = 300
MAX_STOPS, MAX_STOP_CHARS = 16, 256  # each stop string is checked after every token
MAX_KEEP_ALIVE_S = 1e9
PULL_POLL_S = 0.5
NDJSON = "application/x-ndjson"
NDJSON_OR_JSON = {200: {"description": "JSON, or newline-delimited JSON objects when streaming",
                        "content": {"application/json": {}, NDJSON: {}}}}
FOREVER = timedelta(seconds=(2**63 - 1) / 1e9)  # what Ollama reports for a model kept loaded (Go's longest duration)


class OllamaError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class OllamaRoute(APIRoute):
    """Failures of these routes in Ollama's shape. Validation runs inside the route handler, so
    a malformed body is caught here as well, before the app-wide handlers would answer it."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def route(request: Request):
            try:
                return await handler(request)
            except OllamaError as err:
                return error_response(err.status, err.message)
            except RequestValidationError as err:
                return error_response(400, describe_validation(err))
            except TandemError as err:
                return error_response(err.status, err.message)
            except RuntimeFailure as err:
                status = runtime_status(err)
                if status >= 500 and status != 503:
                    log.error("engine failure on %s: %s", request.url.path, err)
                headers = {"Retry-After": str(err.retry_after_s)} if isinstance(err, QueueFull) else None
                return error_response(status, str(err), headers)
            except StarletteHTTPException as err:  # a body that is not even JSON, say
                return error_response(err.status_code, err.detail if isinstance(err.detail, str) else "Request failed")
            except Exception:  # noqa: BLE001 - a bug must still answer in the shape clients parse
                log.exception("unexpected error on %s", request.url.path)
                return error_response(500, "Tandem hit an unexpected error; the details are in its log.")

        return route


router = APIRouter(prefix="/api", tags=["ollama"], route_class=OllamaRoute)


# --- request bodies

Text = Annotated[str, Field(max_length=MAX_CHARS), Utf8]
ModelName = Annotated[str, Field(min_length=1, max_length=MAX_NAME), Utf8]
StopText = Annotated[str, Field(max_length=MAX_STOP_CHARS), Utf8]
Finite = dict(allow_inf_nan=False)

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION = re.compile(rf"(?:{_DURATION_PART.pattern})+")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SECONDS = re.compile(r"\d+(?:\.\d+)?")


def parse_keep_alive(value: Any) -> float | None:
    """Seconds from Ollama's keep_alive: a number of seconds, or a Go duration string ("5m",
    "1h30m", "300ms", "0"); negative: keep the model loaded (-1). A bare number in a string is
    seconds too, as some clients send it so. Anything else is refused, never guessed."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("keep_alive is a duration like \"5m\" or a number of seconds, not true/false")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:  # an integer with hundreds of digits
            raise ValueError(f"keep_alive is at most {MAX_KEEP_ALIVE_S:.0f} seconds") from None
    elif isinstance(value, str):
        text = value.strip()
        sign, body = (-1.0, text[1:]) if text[:1] == "-" else (1.0, text[1:] if text[:1] == "+" else text)
        if len(text) > 64 or not body:
            raise ValueError(f"keep_alive {value[:64]!r} is not a duration; write it like \"5m\", \"1h\" or \"30s\"")
        if _SECONDS.fullmatch(body):
            seconds = sign * float(body)
        elif _DURATION.fullmatch(body):
            seconds = sign * sum(float(n) * _UNIT_S[u] for n, u in _DURATION_PART.findall(body))
        else:
            raise ValueError(f"keep_alive {value!r} is not a duration; write it like \"5m\", \"1h\" or \"30s\"")
    else:
        raise ValueError("keep_alive is a duration like \"5m\" or a number of seconds")
    if not math.isfinite(seconds):
        raise ValueError("keep_alive must be a finite number of seconds")
    if seconds < 0:
        return -1.0  # the scheduler keeps a model with a negative keep-alive loaded
    if seconds > MAX_KEEP_ALIVE_S:
        raise ValueError(f"keep_alive is at most {MAX_KEEP_ALIVE_S:.0f} seconds; a negative value keeps the model loaded")
    return seconds


class Options(BaseModel):
    """The Modelfile parameters Tandem's sampler has; other keys are accepted and ignored, as
    Ollama itself does with keys it does not know."""

    temperature: float | None = Field(None, ge=0.0, le=5.0, **Finite)
    top_p: float | None = Field(None, gt=0.0, le=1.0, **Finite)
    top_k: int | None = Field(None, ge=0, le=1_000_000)
    min_p: float | None = Field(None, ge=0.0, le=1.0, **Finite)
    repeat_penalty: float | None = Field(None, gt=0.0, le=10.0, **Finite)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    # -1: until the model stops, -2: until the context is full (Ollama); 0 is unbounded there too
    num_predict: int | None = Field(None, ge=-2, le=2**31 - 1)
    stop: StopText | Annotated[list[StopText], Field(max_length=MAX_STOPS)] | None = None
    # Not used: the planner picks the context that fits this machine; accepted so that clients
    # which always send it still work.
    num_ctx: int | None = Field(None, ge=0, le=2**31 - 1)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0, **Finite)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0, **Finite)


class Message(BaseModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: Text | None = None  # the client leaves out an empty content
    images: Annotated[list[Annotated[str, Field(max_length=MAX_CHARS)]], Field(max_length=64)] | None = None

    @field_validator("role")
    @classmethod
    def _no_tools(cls, role: str) -> str:
        if role == "tool":
            raise ValueError("role 'tool' is not supported: Tandem does not call tools yet")
        return role


class _Generation(BaseModel):
    model: ModelName
    stream: bool = True
    # "json" or a JSON schema, enforced by a grammar
    format: Literal["", "json"] | dict[str, Any] | None = None
    options: Options | None = None
    keep_alive: float | str | None = None
    think: bool | Literal["low", "medium", "high"] | None = None

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _keep_alive(cls, value: Any) -> float | None:
        return parse_keep_alive(value)


class ChatRequest(_Generation):
    messages: Annotated[list[Message], Field(max_length=MAX_MESSAGES)] | None = None
    tools: Annotated[list[dict[str, Any]], Field(max_length=256)] | None = None


class GenerateRequest(_Generation):
    prompt: Text | None = None
    system: Text | None = None
    suffix: Text | None = None
    template: Text | None = None
    raw: bool | None = None
    images: Annotated[list[Annotated[str, Field(max_length=MAX_CHARS)]], Field(max_length=64)] | None = None
    # Deprecated in Ollama and never handed out by Tandem (history goes through /api/chat).
    context: Annotated[list[int], Field(max_length=1_000_000)] | None = None


class ModelRequest(BaseModel):
    model: ModelName | None = None
    name: ModelName | None = None  # older clients send "name"

    def wanted(self) -> str:
        name = self.model or self.name
        if not name:
            raise OllamaError(400, "model is required")
        return name


class ShowRequest(ModelRequest):
    verbose: bool | None = None


class PullRequest(ModelRequest):
    stream: bool = True
    insecure: bool | None = None  # the hub is always reached over HTTPS


# --- names

def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def hub_name(name: str) -> tuple[str, str | None] | None:
    """(repo id, quant or None for the recommended one) from hf.co/owner/repo:QUANT,
    huggingface.co/owner/repo:QUANT or owner/repo:QUANT; None for any other name."""
    text = name.strip()
    for scheme in ("https://", "http://"):
        if text.lower().startswith(scheme):
            text = text[len(scheme):]
    for host in ("hf.co/", "huggingface.co/"):
        if text.lower().startswith(host):
            text = text[len(host):]
            break
    repo, _, tag = text.partition(":")
    if repo.count("/") != 1 or not all(repo.split("/")):
        return None
    return repo, (None if tag.lower() in ("", "latest") else tag)


def _pulled(store, repo_id: str, quant: str | None) -> dict | None:
    """An installed model downloaded from repo_id (with that quant or file name, when given)."""
    for m in installed_models(store):
        if m["missing"] or (m.get("repo_id") or "").lower() != repo_id.lower():
            continue
        if quant is None or quant.lower() in ((m.get("quant") or "").lower(), Path(m["path"]).name.lower()):
            return m
    return None


def _local(models, name: str) -> dict:
    """An installed model of this machine (what show and delete work on)."""
    model = _installed(models, name)
    if model.get("source") == "remote":
        raise OllamaError(404, f"model '{name}' runs on another server; ask that server about it")
    return model


def _installed(models, name: str) -> dict:
    """The installed model an Ollama client names: a Tandem id (':latest' allowed), the
    hf.co/owner/repo:QUANT it was pulled as, or NAME/model of a registered remote server."""
    wanted = name.strip()
    for candidate in dict.fromkeys((wanted, wanted.removesuffix(":latest"))):
        if candidate:
            try:
                return models.resolve(candidate)
            except NotFound:
                pass
    mapped = hub_name(wanted)
    found = _pulled(models.store, *mapped) if mapped else None
    if found is None and models.remotes.split(wanted) is not None:  # NAME/model of another server
        return {"id": wanted, "name": wanted, "source": "remote"}
    if found is None:
        raise OllamaError(404, f"model '{name}' not found")
    return found


# --- what clients are told about a model

@lru_cache(maxsize=64)
def _inspect(path: str, size: int, mtime_ns: int) -> ModelInfo:  # size and mtime: a changed file is read again
    return inspect_model(path)


def _info(model: dict) -> ModelInfo | None:
    try:
        st = Path(model["path"]).stat()
        return _inspect(model["path"], st.st_size, st.st_mtime_ns)
    except (OSError, RuntimeFailure):  # a missing or damaged file: listed without details
        return None


def _parameter_size(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.1f}B"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    return f"{n / 1e3:.2f}K" if n else ""


def _details(model: dict, info: ModelInfo | None) -> dict:
    family = info.architecture if info else ""
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family] if family else None,
        "parameter_size": _parameter_size(info.n_params) if info else "",
        "quantization_level": (model.get("quant") or (info.file_type if info else None) or ""),
    }


def _digest(model: dict) -> str:
    """A stable identity of this installed model: the hub's SHA-256 of its file when known, else
    a hash of where and when it was installed (Ollama's digest names a manifest, not a file)."""
    if model.get("sha256"):
        return model["sha256"]
    key = "\0".join(str(model.get(k)) for k in ("id", "path", "size_bytes", "added_at"))
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _size(model: dict) -> int:
    return int(model.get("disk_bytes") or model.get("size_bytes") or 0)


# --- generation

def _grammar(fmt) -> str | None:
    if not fmt:
        return None
    return schema_grammar(None if fmt == "json" else fmt, "format")


def _sampling(options: Options | None, settings, fmt=None) -> SamplingParams:
    o = options or Options()
    if o.num_predict is None:
        max_tokens = settings.max_tokens
    elif o.num_predict <= 0:  # "until the model stops": as far as Tandem lets any reply run
        max_tokens = settings.max_reply_tokens
    elif o.num_predict > settings.max_reply_tokens:
        raise OllamaError(400, f"num_predict is at most {settings.max_reply_tokens} (TANDEM_MAX_REPLY_TOKENS).")
    else:
        max_tokens = o.num_predict
    stop = [o.stop] if isinstance(o.stop, str) else (o.stop or [])
    kwargs = {k: v for k, v in (("top_p", o.top_p), ("top_k", o.top_k), ("min_p", o.min_p),
                                ("repeat_penalty", o.repeat_penalty)) if v is not None}
    return SamplingParams(
        temperature=settings.temperature if o.temperature is None else o.temperature,
        max_tokens=max_tokens, stop=tuple(stop), seed=o.seed, grammar=_grammar(fmt),
        presence_penalty=o.presence_penalty or 0.0, frequency_penalty=o.frequency_penalty or 0.0, **kwargs,
    )


def _refuse_unsupported(body: _Generation, model_id: str, images: bool, tools: bool = False) -> None:
    # Ollama's own answers for a model without these capabilities, so that clients fall back
    if tools:
        raise OllamaError(400, f"{model_id} does not support tools")
    if images:
        raise OllamaError(400, f"{model_id} does not support images")
    if body.think:
        raise OllamaError(400, f"{model_id} does not support thinking")


def _line(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False) + "\n"


def _ns(seconds: float | None) -> int:
    return max(0, int(round((seconds or 0.0) * 1e9)))


def _final(finished: Finished, load_s: float) -> dict:
    s = finished.stats
    prompt_s = (s.ttft_s if s.ttft_s is not None else s.total_s) - s.queue_s
    return {
        "done": True,
        "done_reason": "length" if finished.finish_reason == "length" else "stop",
        "total_duration": _ns(load_s + s.total_s),
        "load_duration": _ns(load_s),
        "prompt_eval_count": s.prompt_tokens,
        "prompt_eval_duration": _ns(prompt_s),
        "eval_count": s.completion_tokens,
        "eval_duration": _ns(s.total_s - s.ttft_s if s.ttft_s is not None else 0.0),
    }


async def _serve(body: _Generation, model: dict, messages: list[dict], request: Request, models, settings,
                 shape, raw: bool = False):
    """Answer one chat or generate request; shape(text) is the part of each answer that differs
    between the two (message or response). raw: messages[0] is the whole prompt."""
    sampling = _sampling(body.options, settings, body.format)
    model_id = model["id"]
    if not messages:  # Ollama's way to load or unload a model ahead of use
        if body.keep_alive == 0:
            await asyncio.to_thread(models.scheduler.unload, model_id)
            return {"model": model_id, "created_at": _now(), **shape(""), "done": True, "done_reason": "unload"}
    started = time.perf_counter()
    with ClientWatch(request) as watch:
        lease = await asyncio.to_thread(models.acquire, model_id, body.keep_alive, watch.cancelled)
        load_s = time.perf_counter() - started
        with lease:
            loaded = lease.value
            if body.format and isinstance(loaded.worker, RemoteWorker):
                raise OllamaError(400, f"format is not supported yet for a model on another server ({loaded.worker.remote})")
            if not messages:
                return {"model": loaded.id, "created_at": _now(), **shape(""), "done": True, "done_reason": "load"}
            stream = watch.attach(lease.submit(messages, sampling, loop=asyncio.get_running_loop(),
                                               speculative=models.speculative_for(loaded), raw=raw))
        first = await first_event(stream, watch)
        if not body.stream:
            return await _complete(stream, first, loaded, models, load_s, shape)
    return _stream(request, stream, first, loaded, models, load_s, shape)


async def _events(first, stream):
    yield first
    if not stream.done:
        async for event in stream:
            yield event


async def _complete(stream, first, loaded, models, load_s: float, shape) -> dict:
    finished = None
    try:
        async for event in _events(first, stream):
            if isinstance(event, Finished):
                finished = event
                models.record(loaded, event.stats, "api")
            elif isinstance(event, Failed):
                raise event.error
    finally:
        if finished is None:
            stream.cancel()
    return {"model": loaded.id, "created_at": _now(), **shape(finished.text), **_final(finished, load_s)}


def _stream(request: Request, stream, first, loaded, models, load_s: float, shape) -> StreamingResponse:
    async def lines():
        done = False
        watch = ClientWatch(request)
        watch.attach(stream)
        try:
            async for event in _events(first, stream):
                if isinstance(event, Token):
                    if event.text:
                        yield _line({"model": loaded.id, "created_at": _now(), **shape(event.text), "done": False})
                elif isinstance(event, Finished):
                    done = True
                    models.record(loaded, event.stats, "api")
                    yield _line({"model": loaded.id, "created_at": _now(), **shape(""), **_final(event, load_s)})
                elif isinstance(event, Failed):
                    done = True
                    yield _line({"error": str(event.error)})  # the client raises it as ResponseError
        finally:
            watch.close()
            if not done:
                stream.cancel()

    return StreamingResponse(lines(), media_type=NDJSON)


def _message(text: str) -> dict:
    return {"message": {"role": "assistant", "content": text}}


def _response(text: str) -> dict:
    return {"response": text}


@router.post("/chat", responses=NDJSON_OR_JSON)
async def chat(body: ChatRequest, request: Request, models: ModelsDep, settings: SettingsDep):
    model = await asyncio.to_thread(_installed, models, body.model)
    messages = body.messages or []
    _refuse_unsupported(body, model["id"], images=any(m.images for m in messages), tools=bool(body.tools))
    plain = [{"role": m.role, "content": m.content or ""} for m in messages]
    return await _serve(body, model, plain, request, models, settings, _message)


@router.post("/generate", responses=NDJSON_OR_JSON)
async def generate(body: GenerateRequest, request: Request, models: ModelsDep, settings: SettingsDep):
    model = await asyncio.to_thread(_installed, models, body.model)
    _refuse_unsupported(body, model["id"], images=bool(body.images))
    if body.suffix:
        raise OllamaError(400, f"{model['id']} does not support insert")
    if body.template:
        raise OllamaError(400, "A custom template is not supported: Tandem formats prompts with the model's own "
                               "chat template.")
    messages = []
    if body.raw and body.prompt:  # the prompt as it is, without the chat template
        return await _serve(body, model, [{"role": "user", "content": body.prompt}], request, models, settings,
                            _response, raw=True)
    if body.prompt:  # an empty prompt only loads the model, as with Ollama
        if body.system:
            messages.append({"role": "system", "content": body.system})
        messages.append({"role": "user", "content": body.prompt})
    return await _serve(body, model, messages, request, models, settings, _response)


# --- models

@router.get("/tags")
def tags(store: StoreDep) -> dict:
    """Installed models whose files are present, under their Tandem ids."""
    out = []
    for m in installed_models(store):
        if m["missing"]:
            continue
        out.append({"name": m["id"], "model": m["id"], "modified_at": m.get("added_at") or _now(),
                    "size": _size(m), "digest": _digest(m), "details": _details(m, _info(m))})
    return {"models": out}


def _model_info(path: str, info: ModelInfo | None) -> tuple[dict, str]:
    """(the model's scalar metadata as Ollama's model_info shows it, its chat template)."""
    try:
        metadata = read_model_headers(path)[0].metadata
    except (OSError, RuntimeFailure):
        metadata = {}
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if len(out) >= 512 or not isinstance(key, str) or key == "tokenizer.chat_template":
            continue
        if isinstance(value, bool) or isinstance(value, int):
            pass
        elif isinstance(value, float):
            if not math.isfinite(value):
                continue
        elif isinstance(value, str):
            if len(value) > 4096:
                continue
        else:  # arrays (the vocabulary, merges): Ollama leaves them out unless asked to be verbose
            continue
        try:
            key.encode("utf-8")
            if isinstance(value, str):
                value.encode("utf-8")
        except UnicodeEncodeError:
            continue
        out[key] = value
    if info is not None:
        arch = info.architecture
        out.setdefault("general.architecture", arch)
        out.setdefault("general.parameter_count", info.n_params)
        for key, value in (("context_length", info.n_ctx_train), ("embedding_length", info.n_embd),
                           ("block_count", info.n_layer), ("attention.head_count", info.n_head)):
            if value:
                out.setdefault(f"{arch}.{key}", value)
    template = metadata.get("tokenizer.chat_template")
    if not isinstance(template, str):  # none in the file: Tandem formats with ChatML
        template = CHATML_TEMPLATE if "tokenizer.chat_template" not in metadata else ""
    try:
        template.encode("utf-8")
    except UnicodeEncodeError:
        template = ""
    return out, template


@router.post("/show")
def show(body: ShowRequest, models: ModelsDep, settings: SettingsDep) -> dict:
    model = _local(models, body.wanted())
    info = _info(model)
    model_info, template = _model_info(model["path"], info)
    return {
        "modelfile": "",
        # the defaults Tandem samples with, in the Modelfile's "name value" lines
        "parameters": f"temperature {settings.temperature}\nnum_predict {settings.max_tokens}",
        "template": template,
        "details": _details(model, info),
        "model_info": model_info,
        "capabilities": ["completion"],
        "modified_at": model.get("added_at") or _now(),
    }


@router.get("/ps")
def ps(models: ModelsDep) -> dict:
    """Loaded models. expires_at: when an idle model unloads; a busy one reports the default
    keep-alive from now (its reply's own keep_alive applies when it ends); a model kept loaded
    reports Ollama's 'forever'."""
    now = datetime.now(timezone.utc)
    out = []
    for row in models.status()["models"]:
        served = models.loaded_model(row["id"])
        if not isinstance(served, ServedModel):  # still loading, or a remote server's model
            continue
        try:
            model = models.store.get_model(row["id"])
        except NotFound:  # removed while loaded; it unloads as its replies end
            model = {"id": row["id"], "path": str(served.worker.params.path), "size_bytes": served.info.file_size}
        if row["unload_in_s"] is not None:
            expires = now + timedelta(seconds=row["unload_in_s"])
        elif row["holds"]:
            expires = now + timedelta(seconds=models.settings.keep_alive_s)
        else:
            expires = now + FOREVER
        memory = row["memory"] or {}
        out.append({
            "name": row["id"], "model": row["id"],
            "size": int(sum(memory.values()) or served.info.file_size or 0),
            "size_vram": int(sum(v for d, v in memory.items() if d != "CPU")),
            "digest": _digest(model), "details": _details(model, served.info),
            "expires_at": expires.isoformat().replace("+00:00", "Z"),
            "context_length": served.plan.n_ctx,
        })
    return {"models": out}


@router.get("/version")
def version() -> dict:
    return {"version": OLLAMA_VERSION, "tandem_version": __version__}


@router.delete("/delete")
def delete(body: ModelRequest, models: ModelsDep, hub: HubDep) -> dict:
    """Unregister a model; files Tandem downloaded are deleted (imported files are left alone)."""
    model = _local(models, body.wanted())
    hub.remove(model["id"])
    return {"status": "success"}


# --- pulling from Hugging Face

PULL_HINT = ("Tandem pulls GGUF models from Hugging Face: name one as hf.co/owner/repo:QUANT "
             "(e.g. hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M), or search with `tandem search`.")
FINISHING = ({"status": "verifying sha256 digest"}, {"status": "writing manifest"}, {"status": "success"})


def _progress(d: dict) -> dict:
    first = (d.get("files") or [{}])[0]
    item = {"status": "downloading", "total": int(d.get("total_bytes") or 0), "completed": int(d.get("done_bytes") or 0)}
    if first.get("sha256"):
        item["digest"] = f"sha256:{first['sha256']}"
    return item


def _failure(d: dict) -> tuple[int, str]:
    status = 507 if d.get("error_code") == "disk_full" else 502
    return status, d.get("error") or f"The download was {d['status']}; start the pull again to resume it."


@router.post("/pull", responses=NDJSON_OR_JSON)
async def pull(body: PullRequest, request: Request, hub: HubDep, store: StoreDep):
    name = body.wanted()
    mapped = hub_name(name)
    if mapped is None:
        raise OllamaError(404, f"model '{name}' cannot be pulled. {PULL_HINT}")
    repo_id, quant = mapped
    download_id = None
    if quant is None or await asyncio.to_thread(_pulled, store, repo_id, quant) is None:
        try:
            _, status = await asyncio.to_thread(hub.pull, repo_id, quant)
            download_id = status["id"]
        except Conflict:  # already installed, as Ollama answers a pull of a model it has
            if await asyncio.to_thread(_pulled, store, repo_id, quant) is None:
                raise

    if not body.stream:
        while download_id is not None:
            d = await asyncio.to_thread(hub.downloads.status, download_id)
            if d["status"] == "complete":
                break
            if d["status"] not in ("queued", "downloading"):
                raise OllamaError(*_failure(d))
            if await request.is_disconnected():  # the download goes on; only the waiting stops
                raise Interrupted("The client went away.")
            await asyncio.sleep(PULL_POLL_S)
        return {"status": "success"}

    async def lines():
        # Leaving early does not stop the download: it goes on in Tandem's download manager (and
        # shows in the app), and pulling the same name again follows it.
        yield _line({"status": "pulling manifest"})
        last = None
        while download_id is not None:
            d = await asyncio.to_thread(hub.downloads.status, download_id)
            item = _progress(d)
            if item != last:
                last = item
                yield _line(item)
            if d["status"] == "complete":
                break
            if d["status"] not in ("queued", "downloading"):
                yield _line({"error": _failure(d)[1]})
                return
            await asyncio.sleep(PULL_POLL_S)
        for item in FINISHING:
            yield _line(item)

    return StreamingResponse(lines(), media_type=NDJSON)


# --- embeddings

class EmbedRequest(ModelRequest):
    input: Text | Annotated[list[Text], Field(min_length=1, max_length=2048)]
    truncate: bool = True
    keep_alive: Any = None
    options: Options | None = None
    dimensions: int | None = Field(None, ge=1)

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _keep_alive(cls, value: Any) -> float | None:
        return parse_keep_alive(value)


class EmbeddingsRequest(ModelRequest):
    prompt: Text = ""
    keep_alive: Any = None
    options: Options | None = None

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _keep_alive(cls, value: Any) -> float | None:
        return parse_keep_alive(value)


@router.post("/embed")
async def embed(body: EmbedRequest, request: Request, models: ModelsDep) -> dict:
    model = await asyncio.to_thread(_installed, models, body.wanted())
    texts = [body.input] if isinstance(body.input, str) else body.input
    started = time.perf_counter()
    loaded, result = await embed_texts(texts, model["id"], body.keep_alive, request, models, truncate=body.truncate)
    vectors = [list(v) for v in result.vectors]
    if body.dimensions is not None:
        if body.dimensions > len(vectors[0]):
            raise OllamaError(400, f"{model['id']} has {len(vectors[0])} dimensions; ask for at most that many")
        vectors = [_unit(v[: body.dimensions]) for v in vectors]
    return {"model": loaded.id, "embeddings": vectors, "total_duration": _ns(time.perf_counter() - started),
            "load_duration": 0, "prompt_eval_count": result.prompt_tokens}


@router.post("/embeddings")
async def embeddings(body: EmbeddingsRequest, request: Request, models: ModelsDep) -> dict:
    model = await asyncio.to_thread(_installed, models, body.wanted())
    if not body.prompt:  # Ollama answers an empty prompt with an empty embedding
        return {"embedding": []}
    _, result = await embed_texts([body.prompt], model["id"], body.keep_alive, request, models, truncate=True)
    return {"embedding": list(result.vectors[0])}


def _unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / norm for x in v]
