"""The OpenAI-compatible API beyond plain chat, with the official openai client against a real
server: text completions, embeddings, n, logprobs, logit bias, JSON output enforced by grammars,
tool calls through a model's own template, and every documented error shape."""

import json
import math

import httpx
import jsonschema_rs
import openai
import pytest

from tandem.runtime.synth import preset, write_model

MODEL = "smollm2-135m-instruct-q4_1"
ASK = [{"role": "user", "content": "Describe a city."}]

# A Hermes/Qwen-style template: tools in the system turn, calls in <tool_call> blocks, results
# as <tool_response> user turns.
TOOLS_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n"
    "{{ messages[0]['content'] if messages[0]['role'] == 'system' else 'You are a helpful assistant.' }}\n\n"
    "# Tools\nYou may call one or more functions.\n<tools>\n"
    "{%- for tool in tools %}\n{{ tool | tojson }}{%- endfor %}\n</tools>\n"
    "Return each call as a JSON object within <tool_call></tool_call> tags.<|im_end|>\n"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' and tools %}"
    "{%- elif message['role'] == 'assistant' and message['tool_calls'] %}<|im_start|>assistant\n"
    "{%- for tc in message['tool_calls'] %}<tool_call>\n"
    "{\"name\": \"{{ tc['function']['name'] }}\", \"arguments\": {{ tc['function']['arguments'] | tojson }}}\n"
    "</tool_call>{%- endfor %}<|im_end|>\n"
    "{%- elif message['role'] == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message['content'] }}\n"
    "</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city now.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                                    "unit": {"type": "string", "enum": ["C", "F"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                                  "required": ["a", "b"], "additionalProperties": False}}}


@pytest.fixture()
def oai(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed", max_retries=0, timeout=120)
    yield client
    client.close()


@pytest.fixture(scope="module")
def tool_model(server, tmp_path_factory):
    path = write_model(tmp_path_factory.mktemp("tools") / "tools.gguf", preset("tiny"), chat_template=TOOLS_TEMPLATE)
    r = httpx.post(server.url + "/api/hub/import", json={"path": str(path)}, timeout=120)
    return r.json()["registered"][0]["id"]


# --- completions
def test_text_completion_continues_the_prompt_without_a_template(oai):
    r = oai.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0)
    chat = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "The capital of France is"}],
                                       max_tokens=8, temperature=0)
    assert r.object == "text_completion" and "Paris" in r.choices[0].text
    assert r.usage.prompt_tokens < chat.usage.prompt_tokens  # no chat markup around it
    assert r.choices[0].finish_reason in ("stop", "length")


def test_streamed_completion_equals_the_whole_one_and_echo_logprobs_line_up(oai):
    whole = oai.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=12, temperature=0)
    parts = list(oai.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=12, temperature=0,
                                        stream=True, stream_options={"include_usage": True}))
    assert "".join(p.choices[0].text for p in parts if p.choices) == whole.choices[0].text
    assert parts[-1].usage.completion_tokens == whole.usage.completion_tokens
    r = oai.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=0, echo=True, logprobs=2)
    choice = r.choices[0]
    assert choice.text.startswith("Once upon a time")
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset) == r.usage.completion_tokens
    assert "".join(lp.tokens) == choice.text[len("Once upon a time"):]
    assert lp.text_offset[0] == len("Once upon a time")
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert value <= 0 and len(top) == 2 and max(top.values()) == pytest.approx(value)  # greedy: the best one


def test_several_prompts_and_n_give_a_choice_each(oai):
    r = oai.completions.create(model=MODEL, prompt=["Red", "Blue"], n=2, max_tokens=4, temperature=0.9, seed=7)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]


# --- chat: n, logprobs, logit bias
def test_n_choices_are_separate_draws(oai):
    r = oai.chat.completions.create(model=MODEL, messages=ASK, n=3, max_tokens=16, temperature=1.0, seed=11)
    texts = [c.message.content for c in r.choices]
    assert [c.index for c in r.choices] == [0, 1, 2] and len(set(texts)) > 1
    again = oai.chat.completions.create(model=MODEL, messages=ASK, n=3, max_tokens=16, temperature=1.0, seed=11)
    assert [c.message.content for c in again.choices] == texts  # seeded: the same draws again


def test_logprobs_are_the_models_and_name_the_tokens_written(oai):
    r = oai.chat.completions.create(model=MODEL, messages=ASK, max_tokens=10, temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert t.logprob <= 0 and bytes(t.bytes).decode("utf-8", "replace") == t.token
        assert [x.logprob for x in t.top_logprobs] == sorted((x.logprob for x in t.top_logprobs), reverse=True)
        assert t.top_logprobs[0].token == t.token  # greedy
        assert sum(math.exp(x.logprob) for x in t.top_logprobs) <= 1 + 1e-6
    streamed = list(oai.chat.completions.create(model=MODEL, messages=ASK, max_tokens=10, temperature=0, logprobs=True,
                                                stream=True))
    last = [c for c in streamed if c.choices and c.choices[0].finish_reason][0]
    assert [t.token for t in last.choices[0].logprobs.content] == [t.token for t in content]


@pytest.fixture(scope="module")
def vocab(model_path):
    import llama_cpp

    llama = llama_cpp.Llama(str(model_path), vocab_only=True, verbose=False)
    yield lambda text: llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    llama.close()


def test_logit_bias_bans_and_forces_tokens(oai, vocab):
    first = oai.chat.completions.create(model=MODEL, messages=ASK, max_tokens=1, temperature=0, logprobs=True)
    written = first.choices[0].logprobs.content[0].token
    [banned_id] = vocab(written)
    other = oai.chat.completions.create(model=MODEL, messages=ASK, max_tokens=1, temperature=0, logprobs=True,
                                        logit_bias={str(banned_id): -100})
    assert other.choices[0].logprobs.content[0].token != written
    [forced] = vocab(" banana")
    r = oai.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4, temperature=0, logit_bias={str(forced): 100})
    assert r.choices[0].message.content == " banana" * 4
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4, logit_bias={"99999999": 5})
    assert info.value.body["param"] == "logit_bias" and "does not have" in info.value.body["message"]


# --- JSON output
SCHEMAS = [
    {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                      "population": {"type": "integer", "minimum": 0}},
     "required": ["city", "population"], "additionalProperties": False},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 12},
                                               "minItems": 1, "maxItems": 4}},
     "required": ["tags"], "additionalProperties": False},
    {"type": "object", "properties": {"ok": {"type": "boolean"}, "mood": {"enum": ["happy", "sad", "calm"]}},
     "required": ["ok", "mood"], "additionalProperties": False},
    {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{2}-\\d{3}$"},
                                      "score": {"type": "number", "minimum": -1, "maximum": 1},
                                      "count": {"type": "integer", "minimum": -5, "maximum": 120}},
     "required": ["code", "score", "count"], "additionalProperties": False},
]


@pytest.mark.parametrize("schema", SCHEMAS, ids=["city", "tags", "enum", "ranges-and-pattern"])
def test_json_schema_output_parses_and_validates(oai, schema):
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
    for seed in (1, 2):
        r = oai.chat.completions.create(model=MODEL, messages=ASK, max_tokens=120, temperature=0.9, seed=seed,
                                        response_format=fmt)
        assert r.choices[0].finish_reason == "stop"
        jsonschema_rs.validate(schema, json.loads(r.choices[0].message.content))
    chunks = list(oai.chat.completions.create(model=MODEL, messages=ASK, max_tokens=120, temperature=0.9, seed=3,
                                              response_format=fmt, stream=True))
    jsonschema_rs.validate(schema, json.loads("".join(c.choices[0].delta.content or "" for c in chunks if c.choices)))


def test_json_object_output_is_an_object(oai):
    r = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=120,
                                    response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_a_schema_that_cannot_be_enforced_is_a_400_naming_response_format(oai):
    for fmt in ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", "minItems": 10**7}}},
                {"type": "json_schema", "json_schema": {"name": "x"}},
                {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "https://evil.example/s"}}}):
        with pytest.raises(openai.BadRequestError) as info:
            oai.chat.completions.create(model=MODEL, messages=ASK, max_tokens=5, response_format=fmt)
        assert info.value.body["param"] == "response_format", info.value.body


# --- tools
def test_a_forced_tool_call_comes_back_as_tool_calls_and_its_result_goes_on(oai, tool_model):
    r = oai.chat.completions.create(model=tool_model, messages=[{"role": "user", "content": "Weather in Oslo?"}],
                                    tools=[WEATHER, ADD], tool_choice="required", max_tokens=200, temperature=0.7, seed=2)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    schema = {"get_weather": WEATHER, "add": ADD}[call.function.name]["function"]["parameters"]
    jsonschema_rs.validate(schema, json.loads(call.function.arguments))
    # the call and its result go back through the template, and the model answers
    follow = oai.chat.completions.create(model=tool_model, tools=[WEATHER, ADD], max_tokens=5, messages=[
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 3}'}])
    assert follow.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert follow.usage.prompt_tokens > r.usage.prompt_tokens


def test_a_named_tool_choice_calls_that_tool_streamed_too(oai, tool_model):
    named = {"type": "function", "function": {"name": "add"}}
    chunks = list(oai.chat.completions.create(model=tool_model, messages=[{"role": "user", "content": "2+3?"}],
                                              tools=[WEATHER, ADD], tool_choice=named, max_tokens=200, stream=True))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].function.name == "add"
    args = json.loads(calls[0].function.arguments)
    assert set(args) == {"a", "b"} and all(isinstance(v, int) for v in args.values())
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    assert not any(c.choices[0].delta.content for c in chunks if c.choices)  # no markup shown as text


def test_tools_reach_the_template_only_when_asked(oai, tool_model):
    plain = oai.chat.completions.create(model=tool_model, messages=ASK, max_tokens=1)
    auto = oai.chat.completions.create(model=tool_model, messages=ASK, max_tokens=1, tools=[WEATHER])
    off = oai.chat.completions.create(model=tool_model, messages=ASK, max_tokens=1, tools=[WEATHER], tool_choice="none")
    assert auto.usage.prompt_tokens > plain.usage.prompt_tokens == off.usage.prompt_tokens


def test_tools_on_a_template_without_them_is_a_400_naming_tools(oai):
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], max_tokens=5)
    assert info.value.body["param"] == "tools" and "does not support tools" in info.value.body["message"]


# --- embeddings
def _cos(a, b):
    return sum(x * y for x, y in zip(a, b))


def test_embeddings_are_unit_vectors_closer_for_similar_sentences(oai):
    texts = ["The cat sat on the mat.", "A kitten was sitting on the rug.", "Quarterly tax filings are due in April."]
    r = oai.embeddings.create(model=MODEL, input=texts)  # the client asks for base64 and decodes it
    v = [d.embedding for d in r.data]
    assert [d.index for d in r.data] == [0, 1, 2] and r.usage.prompt_tokens > 0
    assert all(abs(_cos(x, x) - 1) < 1e-5 for x in v)
    assert _cos(v[0], v[1]) > _cos(v[0], v[2]) and _cos(v[0], v[1]) > _cos(v[1], v[2])
    floats = oai.embeddings.create(model=MODEL, input=texts[0], encoding_format="float").data[0].embedding
    assert max(abs(a - b) for a, b in zip(floats, v[0])) < 1e-5
    short = oai.embeddings.create(model=MODEL, input=texts[0], dimensions=16).data[0].embedding
    assert len(short) == 16 and abs(_cos(short, short) - 1) < 1e-5


def test_embedding_errors(oai):
    with pytest.raises(openai.BadRequestError) as info:
        oai.embeddings.create(model=MODEL, input="word " * 5000)
    assert "Split the text" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError) as info:
        oai.embeddings.create(model=MODEL, input=[[1, 2, 3]])
    assert info.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError) as info:
        oai.embeddings.create(model=MODEL, input="hi", dimensions=100_000)
    assert info.value.body["param"] == "dimensions"


# --- models and error shapes
def test_a_model_is_retrieved_by_id_and_an_unknown_one_is_model_not_found(oai):
    assert oai.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as info:
        oai.models.retrieve("gpt-9")
    assert info.value.body == {"message": info.value.body["message"], "type": "invalid_request_error",
                               "param": "model", "code": "model_not_found"}
    with pytest.raises(openai.NotFoundError) as info:
        oai.embeddings.create(model="gpt-9", input="hi")
    assert info.value.body["code"] == "model_not_found"


def test_a_conversation_past_the_context_is_context_length_exceeded(oai):
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "word " * 20000}], max_tokens=5)
    assert info.value.body["code"] == "context_length_exceeded" and info.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as info:
        oai.completions.create(model=MODEL, prompt="word " * 20000, max_tokens=5)
    assert info.value.body["code"] == "context_length_exceeded" and info.value.body["param"] == "prompt"
    with pytest.raises(openai.BadRequestError) as info:
        oai.embeddings.create(model=MODEL, input="word " * 5000)
    assert info.value.body["code"] == "context_length_exceeded" and info.value.body["param"] == "input"


def test_an_empty_prompt_is_refused_and_the_model_goes_on(oai):
    with pytest.raises(openai.BadRequestError) as info:
        oai.completions.create(model=MODEL, prompt="", max_tokens=5)
    assert info.value.body["param"] == "prompt" and "empty" in info.value.body["message"]
    assert oai.completions.create(model=MODEL, prompt="Hello", max_tokens=3).choices[0].text


def test_what_is_not_supported_is_refused_by_name(oai):
    cases = {
        "messages.0.content": lambda: oai.chat.completions.create(model=MODEL, max_tokens=5, messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]}]),
        "suffix": lambda: oai.completions.create(model=MODEL, prompt="def f(", suffix="return 1", max_tokens=5),
        "best_of": lambda: oai.completions.create(model=MODEL, prompt="Hi", best_of=3, max_tokens=5),
        "n": lambda: oai.chat.completions.create(model=MODEL, messages=ASK, n=50, max_tokens=5),
    }
    for param, call in cases.items():
        with pytest.raises(openai.BadRequestError) as info:
            call()
        assert info.value.body["param"] == param and info.value.body["type"] == "invalid_request_error", info.value.body


BAD = [
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}),
    ("/v1/chat/completions", {"model": MODEL, "messages": "hello"}),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": 5}]}),
    ("/v1/chat/completions", {"model": MODEL, "messages": ASK, "max_tokens": 10**30}),
    ("/v1/chat/completions", {"model": MODEL, "messages": ASK, "seed": 10**40}),
    ("/v1/chat/completions", {"model": MODEL, "messages": ASK, "temperature": "hot"}),
    ("/v1/chat/completions", {"model": MODEL, "messages": ASK, "logit_bias": {"abc": 1}}),
    ("/v1/chat/completions", {"model": MODEL, "messages": ASK, "logit_bias": {"5": 1e9}}),
    ("/v1/chat/completions", {"model": MODEL, "messages": ASK, "logit_bias": {"\u00b2": 5}}),
    ("/v1/chat/completions", {"model": MODEL, "messages": ASK, "top_logprobs": 1000, "logprobs": True}),
    ("/v1/chat/completions", {"model": MODEL, "messages": ASK, "response_format": {"type": "xml"}}),
    ("/v1/chat/completions", {"model": MODEL, "messages": ASK, "tools": [{"type": "function", "function": {"name": "a b"}}]}),
    ("/v1/chat/completions", {"model": MODEL, "messages": ASK, "tool_choice": "sometimes"}),
    ("/v1/chat/completions", {"model": MODEL, "messages": ASK, "stop": ["x"] * 100}),
    ("/v1/completions", {"model": MODEL, "prompt": 5}),
    ("/v1/completions", {"model": MODEL, "prompt": [1, 2, 3]}),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "logprobs": 10**6}),
    ("/v1/embeddings", {"model": MODEL, "input": []}),
    ("/v1/embeddings", {"model": MODEL, "input": {"text": "hi"}}),
    ("/v1/embeddings", {"model": MODEL, "input": "hi", "encoding_format": "int8"}),
]
RAW = [  # bodies json.dumps cannot write
    ("/v1/chat/completions", '{"model": "%s", "messages": [{"role": "user", "content": "\ud800"}]}' % MODEL),
    ("/v1/chat/completions", '{"model": "%s", "messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]}' % MODEL),
    ("/v1/chat/completions", '{"model": "smol\udfff", "messages": [{"role": "user", "content": "hi"}]}'),
    ("/v1/chat/completions", '{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "stop": "\ud800"}' % MODEL),
    ("/v1/chat/completions", '{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}' % MODEL),
    ("/v1/chat/completions", '{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "top_p": 1e999}' % MODEL),
    ("/v1/chat/completions", '{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "seed": 1%s}' % (MODEL, "0" * 5000)),
    ("/v1/chat/completions", '{"model": "%s", "messages": [' % MODEL),
    ("/v1/completions", '{"model": "%s", "prompt": "\ud800"}' % MODEL),
    ("/v1/embeddings", '{"model": "%s", "input": ["ok", "\udbff"]}' % MODEL),
    ("/v1/embeddings", "[]"),
    ("/v1/completions", "not json"),
]


def test_malformed_bodies_are_400s_in_openais_shape(client):
    for path, body in BAD + RAW:
        kw = {"json": body} if isinstance(body, dict) else {"content": body.encode("utf-8", "surrogatepass"),
                                                            "headers": {"content-type": "application/json"}}
        r = client.post(path, **kw)
        shown = body if isinstance(body, dict) else body[:80]
        assert r.status_code == 400, (path, shown, r.status_code, r.text)
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], (path, shown, r.text)
        assert error["type"] == "invalid_request_error"
    assert client.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK, "max_tokens": 2}).status_code == 200


# --- penalties
def _greedy_tokens(oai, **penalty) -> list[str]:
    r = oai.chat.completions.create(model=MODEL, messages=ASK, max_tokens=48, temperature=0, logprobs=True, **penalty)
    return [t.token for t in r.choices[0].logprobs.content]


@pytest.mark.parametrize("penalty", ["frequency_penalty", "presence_penalty"])
def test_frequency_and_presence_penalties_change_the_reply_where_it_would_repeat(oai, penalty):
    """A penalty only lowers tokens already written: the greedy reply is the plain one up to the first
    token the plain reply repeats, and then it goes another way."""
    plain = _greedy_tokens(oai)
    first_repeat = next(i for i, t in enumerate(plain) if t in plain[:i])
    penalised = _greedy_tokens(oai, **{penalty: 2.0})
    assert penalised[:first_repeat] == plain[:first_repeat]
    assert penalised != plain
    assert _greedy_tokens(oai, **{penalty: 2.0}) == penalised  # greedy: the same again
