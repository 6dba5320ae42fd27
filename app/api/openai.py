"""OpenAI-compatible endpoints over the same engine, so standard clients work unchanged.

/v1/models, /v1/models/{id}, /v1/chat/completions (streaming or not; n, logprobs, logit_bias,
penalties, JSON output enforced by a grammar, tools through the model's own chat template),
/v1/completions (a prompt written out in full) and /v1/embeddings. Errors have OpenAI's shape,
{"error": {"message", "type", "param", "code"}}, with its status codes, request validation
included (400, not FastAPI's 422): OpenAIRoute turns every failure of these routes into it.

Where Tandem differs: with logprobs and streaming, the log-probabilities come in the final chunk;
a forced tool call (tool_choice "required" or a named function) is one call, held until complete.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import struct
import time
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from tandem.app.api.deps import KeepAlive, ModelsDep, SettingsDep, StoreDep, Utf8, check_max_tokens
from tandem.app.api.disconnect import ClientWatch, first_event
from tandem.app.api.embed import embed_texts
from tandem.app.api.errors import runtime_status
from tandem.app.api.sse import JSON_OR_SSE_RESPONSE, SSE_HEADERS, sse
from tandem.app.errors import ModelNotFound, TandemError
from tandem.app.remote.worker import RemoteWorker
from tandem.runtime.engine import Failed, Finished, SamplingParams, Token
from tandem.runtime.engine.formats import ToolTextFilter, parse_tool_calls, schema_grammar, tool_call_schema
from tandem.runtime.engine.params import MAX_TOP_LOGPROBS
from tandem.runtime.errors import ContextOverflow, InvalidSampling, QueueFull, RuntimeFailure

log = logging.getLogger("tandem")

MAX_MESSAGES = 4096
MAX_CHARS = 1_000_000  # per message: far past any context Tandem plans for
MAX_STOPS, MAX_STOP_CHARS = 16, 256  # each stop string is checked after every token
MAX_N = 8
MAX_TOOLS = 128
MAX_EMBED_INPUTS = 2048
MAX_BIAS = 1024  # logit_bias entries

Text = Annotated[str, Field(max_length=MAX_CHARS), Utf8]
Name = Annotated[str, Field(max_length=256), Utf8]
StopText = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS), Utf8]
Finite = dict(allow_inf_nan=False)


# --- errors in OpenAI's shape
def openai_error(status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict | None = None) -> JSONResponse:
    kind = "rate_limit_error" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


def _validation(err: RequestValidationError) -> JSONResponse:
    errors = err.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return openai_error(400, "The request body is not valid JSON. Send a JSON object with "
                            "Content-Type: application/json.", "invalid_request_error")
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    parts = [f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body') or 'body'}: {e.get('msg', 'invalid')}"
             for e in errors[:5]]
    more = f"; and {len(errors) - 5} more" if len(errors) > 5 else ""
    return openai_error(400, "Invalid request: " + "; ".join(parts) + more, "invalid_request_error", param)


class OpenAIRoute(APIRoute):
    """Failures of these routes in OpenAI's shape; validation runs inside the route handler, so a
    malformed body is answered here too."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def route(request: Request):
            try:
                return await handler(request)
            except RequestValidationError as err:
                return _validation(err)
            except ModelNotFound as err:
                return openai_error(404, err.message, "model_not_found", "model")
            except TandemError as err:
                status = 400 if err.status == 422 else err.status
                return openai_error(status, err.message, "invalid_request_error" if status == 400 else err.code)
            except ContextOverflow as err:
                param = {"/v1/completions": "prompt", "/v1/embeddings": "input"}.get(request.url.path, "messages")
                return openai_error(400, str(err), "context_length_exceeded", param)
            except InvalidSampling as err:
                return openai_error(400, str(err), "invalid_request_error", err.param)
            except RuntimeFailure as err:
                status = runtime_status(err)
                if status >= 500 and status != 503:
                    log.error("engine failure on %s: %s", request.url.path, err)
                if isinstance(err, QueueFull):
                    return openai_error(429, str(err), "rate_limit_exceeded", headers={"Retry-After": str(err.retry_after_s)})
                return openai_error(status, str(err), err.code)
            except StarletteHTTPException as err:
                return openai_error(err.status_code, err.detail if isinstance(err.detail, str) else "Request failed")
            except Exception:  # noqa: BLE001 - a bug must still answer in the shape clients parse
                log.exception("unexpected error on %s", request.url.path)
                return openai_error(500, "Tandem hit an unexpected error; the details are in its log.", "internal_error")

        return route


router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute)


# --- request bodies
class ContentPart(BaseModel):
    type: str = Field(..., max_length=64)
    text: Text | None = None


class FunctionCall(BaseModel):
    name: Name
    arguments: Text = "{}"


class ToolCall(BaseModel):
    id: Name | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Text | Annotated[list[ContentPart], Field(max_length=256)] | None = None
    name: Name | None = None
    tool_calls: Annotated[list[ToolCall], Field(max_length=MAX_TOOLS)] | None = None
    tool_call_id: Name | None = None

    def plain(self, index: int) -> dict:
        content = self.content
        if isinstance(content, list):
            for part in content:
                if part.type != "text" or part.text is None:
                    raise InvalidSampling(f"messages[{index}] has a {part.type!r} part; Tandem's models read text "
                                          "only. Send the text as a 'text' part.", f"messages.{index}.content")
            content = "".join(p.text for p in content)
        message = {"role": "system" if self.role == "developer" else self.role, "content": content or ""}
        if self.tool_calls:
            calls = []
            for call in self.tool_calls:
                try:
                    args = json.loads(call.function.arguments or "{}")
                except ValueError:
                    args = call.function.arguments  # templates show it as it was written
                calls.append({"id": call.id or "", "type": "function",
                              "function": {"name": call.function.name, "arguments": args}})
            message["tool_calls"] = calls
        if self.role == "tool":
            message["tool_call_id"] = self.tool_call_id or ""
            if self.name:
                message["name"] = self.name
        return message


class StreamOptions(BaseModel):
    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    name: Name = "response"
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None
    description: Text | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class FunctionDef(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    description: Text | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(BaseModel):
    name: Name


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


class _Sampling(BaseModel):
    """What chat and text completions share."""

    model: Name | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0, **Finite)
    top_p: float | None = Field(None, gt=0.0, le=1.0, **Finite)
    max_tokens: int | None = Field(None, ge=1)
    stop: StopText | Annotated[list[StopText], Field(max_length=MAX_STOPS)] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    n: int = Field(1, ge=1, le=MAX_N)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0, **Finite)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0, **Finite)
    logit_bias: Annotated[dict[str, Annotated[float, Field(ge=-100, le=100, **Finite)]],
                          Field(max_length=MAX_BIAS)] | None = None
    user: Name | None = None
    # seconds the model stays loaded once idle (Tandem and Ollama extension; negative: always)
    keep_alive: KeepAlive | None = None

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value):
        if value:
            for key in value:
                if not re.fullmatch(r"[0-9]{1,9}", key):
                    raise ValueError(f"logit_bias keys are token ids (whole numbers as strings), not {key[:40]!r}")
        return value

    def sampling(self, settings, max_tokens: int | None, grammar: str | None = None, logprobs: int | None = None,
                 index: int = 0) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        seed = None if self.seed is None else self.seed + index  # n choices: n different draws
        return SamplingParams(
            temperature=settings.temperature if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            max_tokens=max_tokens or settings.max_tokens, stop=tuple(stop), seed=seed,
            presence_penalty=self.presence_penalty or 0.0, frequency_penalty=self.frequency_penalty or 0.0,
            logit_bias=tuple((int(k), v) for k, v in (self.logit_bias or {}).items()),
            grammar=grammar, logprobs=logprobs,
        )


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(_Sampling):
    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_N)]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    suffix: Text | None = None
    best_of: int | None = Field(None, ge=1, le=MAX_N)


class EmbeddingRequest(BaseModel):
    model: Name | None = None
    input: (Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_EMBED_INPUTS)]
            | Annotated[list[int], Field(min_length=1)] | Annotated[list[list[int]], Field(min_length=1)])
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: Name | None = None
    keep_alive: KeepAlive | None = None


# --- models
def _epoch(iso: str | None) -> int:
    try:
        return int(datetime.fromisoformat(iso).timestamp())
    except (TypeError, ValueError):
        return 0


def _model_object(m: dict) -> dict:
    return {"id": m["id"], "object": "model", "created": _epoch(m["added_at"]), "owned_by": "tandem"}


def _remote_objects(models) -> list[dict]:
    """The models of the registered remote servers, as NAME/model (from a cache: a server that
    does not answer keeps the models it last had)."""
    out = []
    for r in models.remotes.list():
        created = _epoch(r["added_at"])
        out += [{"id": m, "object": "model", "created": created, "owned_by": r["name"]} for m in r["models"]]
    return out


@router.get("/models")
async def list_models(store: StoreDep, models: ModelsDep) -> dict:
    remote = await asyncio.to_thread(_remote_objects, models)
    return {"object": "list", "data": [_model_object(m) for m in store.list_models()] + remote}


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, store: StoreDep, models: ModelsDep) -> dict:
    for m in store.list_models():
        if model_id in (m["id"], m["name"]):
            return _model_object(m)
    for m in await asyncio.to_thread(_remote_objects, models):
        if m["id"] == model_id:
            return m
    raise ModelNotFound(f"Model {model_id!r} is not installed; GET /v1/models lists the installed ones.")


# --- chat completions
class _Plan:
    """How the replies of one request are asked for and read back."""

    def __init__(self, grammar: str | None = None, tools: list[dict] | None = None, forced: bool = False,
                 logprobs: int | None = None):
        self.grammar, self.tools, self.forced, self.logprobs = grammar, tools, forced, logprobs
        self.names = {t["function"]["name"] for t in tools} if tools else set()

    def calls(self, text: str) -> tuple[str | None, list[dict]]:
        """(content, tool calls in OpenAI's shape) of a finished reply."""
        if not self.tools:
            return text, []
        if self.forced:
            try:
                call = json.loads(text)
                found = [{"name": call["name"], "arguments": call["arguments"]}]
            except (ValueError, KeyError, TypeError):  # cut off by max_tokens
                return text, []
            content = ""
        else:
            content, found = parse_tool_calls(text, self.names)
        calls = [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                  "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
                 for c in found]
        return (content or None) if calls else text, calls


def refuse_for_remote(worker, asked: dict[str, bool]) -> None:
    """A model on another server gets the reply's text and sampling; what Tandem's own sampler
    enforces (grammars, tool calls, log-probabilities, logit bias) is refused by name, not dropped."""
    if not isinstance(worker, RemoteWorker):
        return
    for param, wanted in asked.items():
        if wanted:
            raise InvalidSampling(f"{param} is not supported yet for a model on another server ({worker.remote}); "
                                  "send the request to that server directly, or leave it out.", param)


def _chat_plan(body: ChatCompletionRequest, worker) -> _Plan:
    refuse_for_remote(worker, {
        "tools": bool(body.tools) and body.tool_choice != "none",
        "response_format": body.response_format is not None and body.response_format.type != "text",
        "logprobs": body.logprobs, "logit_bias": bool(body.logit_bias)})
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    choice = body.tool_choice
    tools = [t.model_dump(exclude_none=True) for t in body.tools] if body.tools and choice != "none" else None
    grammar = None
    if body.response_format is not None and body.response_format.type != "text":
        if body.response_format.type == "json_schema":
            spec = body.response_format.json_schema
            if spec is None or spec.schema_ is None:
                raise InvalidSampling("response_format json_schema needs json_schema.schema.", "response_format")
            grammar = schema_grammar(spec.schema_)
        else:
            grammar = schema_grammar(None)
    if not tools:
        return _Plan(grammar, logprobs=logprobs)
    if not worker.supports_tools:
        raise InvalidSampling(f"The chat template of {worker.params.path.name} does not support tools, so it cannot call them. "
                              "Pick a model whose template does (Qwen 2.5, Llama 3.1 and later, Mistral), "
                              "or send the request without tools.", "tools")
    if choice == "required" or isinstance(choice, NamedToolChoice):
        name = choice.function.name if isinstance(choice, NamedToolChoice) else None
        return _Plan(schema_grammar(tool_call_schema(tools, name), "tool_choice"), tools, True, logprobs)
    return _Plan(grammar, tools, False, logprobs)


def _logprobs_chat(finished: Finished) -> dict | None:
    if finished.logprobs is None:
        return None

    def entry(piece: bytes, lp: float) -> dict:
        return {"token": piece.decode("utf-8", "replace"), "logprob": lp, "bytes": list(piece)}

    return {"content": [{**entry(t.piece, t.logprob), "top_logprobs": [entry(p, lp) for _, p, lp in t.top]}
                        for t in finished.logprobs], "refusal": None}


def _finish(reason: str, calls: list | None = None) -> str:
    if calls:
        return "tool_calls"
    return "length" if reason == "length" else "stop"


def _usage(finished: list[Finished]) -> dict:
    prompt = finished[0].stats.prompt_tokens if finished else 0
    completion = sum(f.stats.completion_tokens for f in finished)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _tandem(finished: Finished, loaded) -> dict:
    return {**finished.stats.as_dict(), "predicted_tps": loaded.plan.decode_tps}


async def _start(body: _Sampling, request: Request, models, submit) -> tuple[list, Any, ClientWatch, Any]:
    """Lease the model and submit the request's n replies; returns (streams, the loaded model,
    the client watch, the first event of the first reply)."""
    watch = ClientWatch(request)
    try:
        lease = await asyncio.to_thread(models.acquire, body.model, body.keep_alive, watch.cancelled)
        with lease:
            loaded = lease.value
            streams = [watch.attach(s) for s in submit(lease, loaded)]
        refused = next((s for s in streams if s.ended), None)  # a full queue took only some of the n
        if refused is not None and len(streams) > 1:
            for s in streams:
                s.cancel()
            await first_event(refused, watch)  # raises what refused it
            raise RuntimeFailure("The request could not be queued; try again.")
        try:
            first = await first_event(streams[0], watch)
        except BaseException:
            for s in streams:
                s.cancel()
            raise
        return streams, loaded, watch, first
    except BaseException:
        watch.close()
        raise


async def _read(stream, first) -> Finished:
    """The rest of one reply, to its end (a failure is raised)."""
    finished = first if isinstance(first, Finished) else None
    while finished is None:
        event = await stream.next_event()
        if isinstance(event, Finished):
            finished = event
        elif isinstance(event, Failed):
            raise event.error
    return finished


async def _read_all(streams, first, loaded, models) -> list[Finished]:
    done = []
    try:
        for i, stream in enumerate(streams):
            f = await _read(stream, first if i == 0 else None)
            models.record(loaded, f.stats, "api")
            done.append(f)
    finally:
        for s in streams:
            s.cancel()  # a no-op on those that ended
    return done


@router.post("/chat/completions", responses=JSON_OR_SSE_RESPONSE)
async def chat_completions(body: ChatCompletionRequest, request: Request, models: ModelsDep, settings: SettingsDep):
    asked = body.max_completion_tokens or body.max_tokens
    check_max_tokens(asked, settings)
    messages = [m.plain(i) for i, m in enumerate(body.messages)]
    plans: list[_Plan] = []

    def submit(lease, loaded):
        plan = _chat_plan(body, loaded.worker)
        plans.append(plan)
        loop = asyncio.get_running_loop()
        speculative = models.speculative_for(loaded)
        return [lease.submit(messages, body.sampling(settings, asked, plan.grammar, plan.logprobs, i), loop=loop,
                             speculative=speculative, tools=plan.tools) for i in range(body.n)]

    streams, loaded, watch, first = await _start(body, request, models, submit)
    plan = plans[0]
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        return StreamingResponse(_chat_events(body, request, streams, first, loaded, models, plan, completion_id,
                                              created, watch), media_type="text/event-stream", headers=SSE_HEADERS)
    with watch:
        done = await _read_all(streams, first, loaded, models)
    choices = []
    for i, f in enumerate(done):
        content, calls = plan.calls(f.text)
        message = {"role": "assistant", "content": content, "refusal": None}
        if calls:
            message["tool_calls"] = calls
        choices.append({"index": i, "message": message, "logprobs": _logprobs_chat(f),
                        "finish_reason": _finish(f.finish_reason, calls)})
    return {"id": completion_id, "object": "chat.completion", "created": created, "model": loaded.id,
            "system_fingerprint": None, "choices": choices, "usage": _usage(done), "tandem": _tandem(done[0], loaded)}


async def _chat_events(body, request, streams, first, loaded, models, plan: _Plan, completion_id, created, watch):
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(index: int, delta: dict, finish: str | None = None, tandem: dict | None = None, **extra) -> str:
        out = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": loaded.id,
               "system_fingerprint": None,
               "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish, **extra}]}
        if tandem is not None:
            out["tandem"] = tandem
        return sse(out)

    done: list[Finished] = []
    try:
        for i, stream in enumerate(streams):
            yield chunk(i, {"role": "assistant", "content": ""})
            held = ToolTextFilter(hold=plan.forced) if plan.tools else None
            event, finished = (first if i == 0 else None), None
            while finished is None:
                if event is None:
                    event = await stream.next_event()
                if isinstance(event, Token):
                    text = event.text if held is None else held.feed(event.text)
                    if text:
                        yield chunk(i, {"content": text})
                elif isinstance(event, Finished):
                    finished = event
                elif isinstance(event, Failed):
                    raise event.error
                event = None
            models.record(loaded, finished.stats, "api")
            done.append(finished)
            calls = []
            if held is not None:
                content, calls = plan.calls(held.text)
                if calls:
                    before = held.text[: held.shown].strip()
                    rest = content[len(before):] if content and content.startswith(before) else ""
                    if rest.strip():  # text around the calls that was held back with them
                        yield chunk(i, {"content": rest})
                    for k, call in enumerate(calls):
                        yield chunk(i, {"tool_calls": [{"index": k, **call}]})
                elif held.unshown():
                    yield chunk(i, {"content": held.unshown()})
            extra = {"logprobs": _logprobs_chat(finished)} if finished.logprobs is not None else {}
            yield chunk(i, {}, _finish(finished.finish_reason, calls), tandem=_tandem(finished, loaded), **extra)
        if include_usage and done:
            yield sse({"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": loaded.id,
                       "system_fingerprint": None, "choices": [], "usage": _usage(done)})
        yield sse("[DONE]")
    except RuntimeFailure as err:
        status = runtime_status(err)
        code = "context_length_exceeded" if isinstance(err, ContextOverflow) else err.code
        yield sse({"error": {"message": str(err), "type": "server_error" if status >= 500 else "invalid_request_error",
                             "param": None, "code": code}})
        yield sse("[DONE]")
    finally:
        watch.close()
        for s in streams:
            s.cancel()


# --- text completions
def _logprobs_text(finished: Finished, offset: int) -> dict | None:
    if finished.logprobs is None:
        return None
    tokens, lps, tops, offsets = [], [], [], []
    for t in finished.logprobs:
        text = t.piece.decode("utf-8", "replace")
        tokens.append(text)
        lps.append(t.logprob)
        tops.append({p.decode("utf-8", "replace"): lp for _, p, lp in t.top} if t.top else None)
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


@router.post("/completions", responses=JSON_OR_SSE_RESPONSE)
async def completions(body: CompletionRequest, request: Request, models: ModelsDep, settings: SettingsDep):
    check_max_tokens(body.max_tokens, settings)
    if body.suffix:
        raise InvalidSampling("suffix (insertion) is not supported; send the text before the gap as the prompt.", "suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise InvalidSampling("best_of other than n is not supported; leave it out.", "best_of")
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) * body.n > MAX_N:
        raise InvalidSampling(f"prompts times n is at most {MAX_N}; send fewer at once.", "n")

    def submit(lease, loaded):
        refuse_for_remote(loaded.worker, {"logprobs": body.logprobs is not None, "logit_bias": bool(body.logit_bias)})
        loop = asyncio.get_running_loop()
        return [lease.submit([{"role": "user", "content": p}], body.sampling(settings, body.max_tokens, None, body.logprobs, j),
                             loop=loop, raw=True) for p in prompts for j in range(body.n)]

    streams, loaded, watch, first = await _start(body, request, models, submit)
    completion_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    prompt_of = [p for p in prompts for _ in range(body.n)]
    if body.stream:
        return StreamingResponse(_completion_events(body, streams, first, loaded, models, prompt_of, completion_id,
                                                    created, watch), media_type="text/event-stream", headers=SSE_HEADERS)
    with watch:
        done = await _read_all(streams, first, loaded, models)
    choices = []
    for i, f in enumerate(done):
        head = prompt_of[i] if body.echo else ""
        choices.append({"index": i, "text": head + f.text, "logprobs": _logprobs_text(f, len(head)),
                        "finish_reason": _finish(f.finish_reason)})
    usage = {"prompt_tokens": sum(f.stats.prompt_tokens for f in done[:: body.n]),
             "completion_tokens": sum(f.stats.completion_tokens for f in done)}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return {"id": completion_id, "object": "text_completion", "created": created, "model": loaded.id,
            "system_fingerprint": None, "choices": choices, "usage": usage, "tandem": _tandem(done[0], loaded)}


async def _completion_events(body, streams, first, loaded, models, prompt_of, completion_id, created, watch):
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(index: int, text: str, finish: str | None = None, logprobs=None) -> str:
        return sse({"id": completion_id, "object": "text_completion", "created": created, "model": loaded.id,
                    "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}]})

    done: list[Finished] = []
    try:
        for i, stream in enumerate(streams):
            if body.echo:
                yield chunk(i, prompt_of[i])
            event, finished = (first if i == 0 else None), None
            while finished is None:
                if event is None:
                    event = await stream.next_event()
                if isinstance(event, Token):
                    yield chunk(i, event.text)
                elif isinstance(event, Finished):
                    finished = event
                elif isinstance(event, Failed):
                    raise event.error
                event = None
            models.record(loaded, finished.stats, "api")
            done.append(finished)
            yield chunk(i, "", _finish(finished.finish_reason), _logprobs_text(finished, 0))
        if include_usage and done:
            prompt = sum(f.stats.prompt_tokens for f in done[:: body.n])
            completion = sum(f.stats.completion_tokens for f in done)
            yield sse({"id": completion_id, "object": "text_completion", "created": created, "model": loaded.id,
                       "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                                "total_tokens": prompt + completion}})
        yield sse("[DONE]")
    except RuntimeFailure as err:
        yield sse({"error": {"message": str(err), "type": "invalid_request_error" if runtime_status(err) < 500
                             else "server_error", "param": None, "code": err.code}})
        yield sse("[DONE]")
    finally:
        watch.close()
        for s in streams:
            s.cancel()


# --- embeddings
@router.post("/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request, models: ModelsDep) -> dict:
    texts = [body.input] if isinstance(body.input, str) else body.input
    if any(not isinstance(t, str) for t in texts):
        raise InvalidSampling("input as token ids is not supported; send the text.", "input")
    loaded, result = await embed_texts(texts, body.model, body.keep_alive, request, models)
    data = []
    for i, v in enumerate(result.vectors):
        if body.dimensions is not None:
            if body.dimensions > len(v):
                raise InvalidSampling(f"This model's embeddings have {len(v)} dimensions; ask for at most that many.",
                                      "dimensions")
            v = v[: body.dimensions]
            norm = sum(x * x for x in v) ** 0.5 or 1.0
            v = tuple(x / norm for x in v)
        value = (base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode("ascii")
                 if body.encoding_format == "base64" else list(v))
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {"object": "list", "data": data, "model": loaded.id,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}}
