"""The Ollama-compatible endpoints, exercised with the official ollama client against a real server
and the built-in model; pulls go through a local stand-in for the Hugging Face hub."""

import json
import time
from pathlib import Path

import httpx
import ollama
import pytest

from tandem.app.server import ServerThread
from tests.conftest import make_settings
from tests.fixtures.hubserver import Fault, HubServer

MODEL = "smollm2-135m-instruct-q4_1"
QUICK = {"temperature": 0, "num_predict": 8}
ASK = [{"role": "user", "content": "Name three fruits."}]
PROFILE = Path(__file__).parent.parent / "fixtures" / "hardware" / "cpu-only-8gb-laptop.json"
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PULL_NAME = f"hf.co/{SMOL}:Q4_1"


@pytest.fixture()
def oll(server):
    client = ollama.Client(host=server.url, timeout=120)
    yield client
    client.close()


def loaded(client: httpx.Client) -> list[str]:
    return [m["name"] for m in client.get("/api/ps").json()["models"]]


def wait_until(check, limit_s: float = 30.0) -> bool:
    """A bound on waiting for something done in the background (an unload), not a timing check."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.1)
    return check()


def test_version(client):
    body = client.get("/api/version").json()
    assert body["version"] == "0.5.0" and body["tandem_version"]


def test_tags_list_the_installed_models(oll, client):
    [model] = oll.list().models
    assert model.model == MODEL and model.size > 0 and model.digest
    assert model.details.format == "gguf" and model.details.family == "llama"
    assert model.details.quantization_level == "Q4_1" and model.details.parameter_size.endswith("M")
    assert client.get("/api/tags").json()["models"][0]["name"] == MODEL


def test_show(oll):
    shown = oll.show(MODEL)
    info = shown.modelinfo
    assert info["general.architecture"] == "llama" and info["llama.context_length"] > 0
    assert info["llama.embedding_length"] > 0 and info["llama.block_count"] > 0
    assert "im_start" in shown.template and shown.capabilities == ["completion"]
    assert shown.details.family == "llama"
    assert oll.show(MODEL + ":latest").modelinfo == info


def test_chat_streaming_matches_non_streaming(oll):
    whole = oll.chat(model=MODEL, messages=ASK, options=QUICK)
    assert whole.message.role == "assistant" and whole.message.content
    assert whole.done and whole.done_reason in ("stop", "length") and whole.model == MODEL
    assert 0 < whole.eval_count <= 8 and whole.prompt_eval_count > 0
    assert all(isinstance(v, int) and v >= 0 for v in (whole.total_duration, whole.load_duration,
                                                         whole.prompt_eval_duration, whole.eval_duration))
    parts = list(oll.chat(model=MODEL, messages=ASK, options=QUICK, stream=True))
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert parts[-1].done_reason == whole.done_reason and parts[-1].eval_count == whole.eval_count
    assert parts[-1].message.content == ""


def test_the_stream_is_ndjson(client):
    body = {"model": MODEL, "messages": ASK, "options": QUICK}
    with client.stream("POST", "/api/chat", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[-1]["done"] and "created_at" in lines[0]


def test_generate(oll):
    whole = oll.generate(model=MODEL, prompt="What colour is the sky?", system="Answer in one word.", options=QUICK)
    assert whole.response and whole.done and whole.done_reason in ("stop", "length")
    parts = list(oll.generate(model=MODEL, prompt="What colour is the sky?", system="Answer in one word.",
                              options=QUICK, stream=True))
    assert "".join(p.response for p in parts) == whole.response and parts[-1].done
    assert oll.generate(model=MODEL, options={"stop": ["\n"], "seed": 7, "top_k": 20, "top_p": 0.9,
                                               "num_ctx": 4096, "num_predict": 8},
                        prompt="Hi").done


def test_penalty_options_change_a_greedy_reply(oll):
    """repeat_penalty, presence_penalty and frequency_penalty reach llama.cpp's sampler: each changes the
    greedy reply, the same way every time."""
    def reply(**option):
        return oll.generate(model=MODEL, prompt="Describe a city.",
                            options={"num_predict": 48, "temperature": 0, **option}).response

    plain = reply()
    for option in ({"repeat_penalty": 1.8}, {"presence_penalty": 2.0}, {"frequency_penalty": 2.0}):
        first = reply(**option)
        assert first != plain and reply(**option) == first, option


def test_an_empty_prompt_loads_the_model(oll):
    r = oll.generate(model=MODEL)
    assert r.done and r.response == "" and r.done_reason == "load"
    assert oll.chat(model=MODEL, messages=[]).done_reason == "load"


def test_ps_lists_a_model_after_a_chat(oll):
    oll.chat(model=MODEL, messages=ASK, options=QUICK)
    [running] = [m for m in oll.ps().models if m.model == MODEL]
    assert running.name == MODEL and running.size > 0 and running.expires_at is not None
    assert running.context_length > 0 and running.details.family == "llama"


def test_keep_alive_zero_unloads_after_the_reply(oll, client):
    oll.chat(model=MODEL, messages=ASK, options=QUICK, keep_alive="10m")
    assert MODEL in loaded(client)
    assert oll.chat(model=MODEL, messages=ASK, options=QUICK, keep_alive="0").message.content
    assert wait_until(lambda: MODEL not in loaded(client))
    oll.generate(model=MODEL, keep_alive=-1)  # load and keep
    assert MODEL in loaded(client)
    assert oll.generate(model=MODEL, keep_alive=0).done_reason == "unload"
    assert wait_until(lambda: MODEL not in loaded(client))


def test_an_unknown_model_is_a_404(oll):
    for call in (lambda: oll.chat(model="nope", messages=ASK),
                 lambda: list(oll.chat(model="nope", messages=ASK, stream=True)),
                 lambda: oll.generate(model="nope:latest", prompt="hi"),
                 lambda: oll.show("nope"),
                 lambda: oll.delete("nope")):
        with pytest.raises(ollama.ResponseError) as err:
            call()
        assert err.value.status_code == 404, err.value
        assert err.value.error in ("model 'nope' not found", "model 'nope:latest' not found")


def test_a_name_tandem_cannot_pull_is_a_404(oll):
    with pytest.raises(ollama.ResponseError) as err:
        oll.pull("llama3")
    assert err.value.status_code == 404 and "hf.co/owner/repo:QUANT" in err.value.error


def test_embed_gives_unit_vectors_closer_for_similar_sentences(oll):
    r = oll.embed(model=MODEL, input=["The cat sat on the mat.", "A kitten was sitting on the rug.",
                                      "Quarterly tax filings are due in April."])
    v = r.embeddings
    assert len(v) == 3 and len(v[0]) == len(v[2]) > 0
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    assert all(abs(dot(x, x) - 1) < 1e-5 for x in v)
    assert dot(v[0], v[1]) > dot(v[0], v[2]) and dot(v[0], v[1]) > dot(v[1], v[2])
    assert r.prompt_eval_count > 0
    single = oll.embeddings(model=MODEL, prompt="The cat sat on the mat.").embedding
    assert max(abs(a - b) for a, b in zip(single, v[0])) < 1e-4
    short = oll.embed(model=MODEL, input="hello", dimensions=8).embeddings[0]
    assert len(short) == 8 and abs(dot(short, short) - 1) < 1e-5


def test_a_text_longer_than_an_embedding_reads_is_cut_or_refused(client):
    long = "word " * 5000
    r = client.post("/api/embed", json={"model": MODEL, "input": long})
    assert r.status_code == 200 and r.json()["prompt_eval_count"] == 512
    r = client.post("/api/embed", json={"model": MODEL, "input": long, "truncate": False})
    assert r.status_code == 400 and "Split the text" in r.json()["error"]


def test_format_json_and_schema_are_enforced(oll):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                               "age": {"type": "integer", "minimum": 0, "maximum": 150}},
              "required": ["name", "age"], "additionalProperties": False}
    r = oll.chat(model=MODEL, messages=[{"role": "user", "content": "Describe a person."}], format=schema,
                 options={"num_predict": 80, "temperature": 0.8, "seed": 4})
    person = json.loads(r.message.content)
    assert set(person) == {"name", "age"} and isinstance(person["age"], int) and 0 <= person["age"] <= 150
    r = oll.generate(model=MODEL, prompt="List three colours.", format="json", options={"num_predict": 80})
    assert isinstance(json.loads(r.response), dict)
    with pytest.raises(ollama.ResponseError) as err:
        oll.chat(model=MODEL, messages=ASK, format={"type": "array", "minItems": 10**6})
    assert err.value.status_code == 400 and "minItems" in err.value.error


def test_raw_generate_continues_the_prompt_as_written(oll, client):
    raw = oll.generate(model=MODEL, prompt="The capital of France is", raw=True, options={"num_predict": 6, "temperature": 0})
    chat = oll.generate(model=MODEL, prompt="The capital of France is", options={"num_predict": 6, "temperature": 0})
    assert raw.prompt_eval_count < chat.prompt_eval_count  # no chat template around it
    assert "Paris" in raw.response


def test_what_the_model_cannot_do_is_refused(oll):
    calls = {
        "tools": lambda: oll.chat(model=MODEL, messages=ASK, tools=[{"type": "function", "function": {"name": "f"}}]),
        "thinking": lambda: oll.chat(model=MODEL, messages=ASK, think=True),
        "images": lambda: oll.generate(model=MODEL, prompt="What is this?", images=[b"\x89PNG"]),
        "insert": lambda: oll.generate(model=MODEL, prompt="def f(", suffix="return x"),
    }
    for word, call in calls.items():
        with pytest.raises(ollama.ResponseError) as err:
            call()
        assert err.value.status_code == 400 and word in err.value.error, (word, err.value.error)


BAD = [
    ("/api/chat", {"model": 5, "messages": ASK}),
    ("/api/chat", {"messages": ASK}),
    ("/api/embed", {"input": "no model named"}),
    ("/api/embeddings", {"prompt": "no model named"}),
    ("/api/chat", {"model": MODEL, "messages": "hello"}),
    ("/api/chat", {"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}),
    ("/api/chat", {"model": MODEL, "messages": [{"role": "tool", "content": "42"}]}),
    ("/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": ["a"]}]}),
    ("/api/chat", {"model": MODEL, "messages": ASK, "stream": "sometimes"}),
    ("/api/chat", {"model": MODEL, "messages": ASK, "options": "hot"}),
    ("/api/chat", {"model": MODEL, "messages": ASK, "options": {"seed": 10**30}}),
    ("/api/chat", {"model": MODEL, "messages": ASK, "options": {"num_predict": 10**12}}),
    ("/api/chat", {"model": MODEL, "messages": ASK, "options": {"num_predict": 100_000}}),
    ("/api/chat", {"model": MODEL, "messages": ASK, "options": {"temperature": -1}}),
    ("/api/chat", {"model": MODEL, "messages": ASK, "options": {"top_k": 10**9}}),
    ("/api/chat", {"model": MODEL, "messages": ASK, "options": {"stop": ["x"] * 100}}),
    ("/api/chat", {"model": MODEL, "messages": ASK, "keep_alive": "5 minutes"}),
    ("/api/chat", {"model": MODEL, "messages": ASK, "keep_alive": "--5m"}),
    ("/api/chat", {"model": MODEL, "messages": ASK, "keep_alive": ""}),
    ("/api/chat", {"model": MODEL, "messages": ASK, "keep_alive": True}),
    ("/api/chat", {"model": MODEL, "messages": ASK, "keep_alive": 1e12}),
    ("/api/chat", {"model": MODEL, "messages": ASK, "keep_alive": [5]}),
    ("/api/chat", {"model": MODEL, "messages": ASK, "format": 3}),
    ("/api/generate", {"model": MODEL, "prompt": 5}),
    ("/api/generate", {"model": MODEL, "prompt": "hi", "template": "{{ .Prompt }}"}),
    ("/api/show", {"model": ""}),
    ("/api/show", {}),
    ("/api/pull", {}),
    ("/api/pull", {"model": "hf.co/../etc:Q4_1"}),
    ("/api/delete", {"model": MODEL}),  # the built-in model stays
]
RAW = [  # bodies json.dumps cannot write
    ("/api/chat", '{"model": "%s", "messages": [{"role": "user", "content": "\\ud800"}]}' % MODEL),
    ("/api/chat", '{"model": "smol\\udfff", "messages": []}'),
    ("/api/generate", '{"model": "%s", "prompt": "hi", "system": "\\udbff\\udbff"}' % MODEL),
    ("/api/chat", '{"model": "%s", "messages": [], "options": {"temperature": NaN}}' % MODEL),
    ("/api/chat", '{"model": "%s", "messages": [], "options": {"top_p": 1e999}}' % MODEL),
    ("/api/chat", '{"model": "%s", "messages": [], "keep_alive": Infinity}' % MODEL),
    ("/api/chat", '{"model": "%s", "messages": [], "keep_alive": 1%s}' % (MODEL, "0" * 400)),
    ("/api/chat", '{"model": "%s", "messages": [], "options": {"seed": 1%s}}' % (MODEL, "0" * 5000)),
    ("/api/chat", '{"model": "%s", "messages": [' % MODEL),
    ("/api/chat", "[]"),
    ("/api/generate", "not json"),
]


def test_malformed_bodies_are_4xx_in_ollamas_shape(client):
    for path, body in BAD + RAW:
        method = "DELETE" if path == "/api/delete" else "POST"
        kw = {"json": body} if isinstance(body, dict) else {"content": body.encode("utf-8", "surrogatepass"),
                                                            "headers": {"content-type": "application/json"}}
        r = client.request(method, path, **kw)
        assert 400 <= r.status_code < 500, (path, body if isinstance(body, dict) else body[:80], r.status_code, r.text)
        assert isinstance(r.json()["error"], str) and r.json()["error"], r.text
    assert client.post("/api/chat", json={"model": MODEL, "messages": ASK, "options": QUICK,
                                          "stream": False}).json()["done"]


def test_keep_alive_durations():
    from tandem.app.api.ollama import parse_keep_alive

    assert parse_keep_alive("5m") == 300 and parse_keep_alive("1h30m") == 5400
    assert parse_keep_alive("300ms") == pytest.approx(0.3) and parse_keep_alive("0") == 0
    assert parse_keep_alive(90) == 90 and parse_keep_alive("45") == 45 and parse_keep_alive("1.5h") == 5400
    assert parse_keep_alive(-1) == -1 and parse_keep_alive("-1m") == -1 and parse_keep_alive(None) is None
    for bad in ("5 m", "m", "5mm", "1d", "-", "5m-", "nan", "inf", "", True, 1e10, float("nan"), 10**400, [5]):
        with pytest.raises(ValueError):
            parse_keep_alive(bad)


# --- pulling through a local hub

@pytest.fixture(scope="module")
def hub_server(model_path, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    with HubServer() as hub:
        hub.add_repo(SMOL, {FILE: model_path}, downloads=10)
        mp.setenv("HF_ENDPOINT", hub.url)
        mp.delenv("HF_TOKEN", raising=False)
        mp.setenv("TANDEM_DOWNLOAD_STALL_S", "2")
        settings = make_settings(tmp_path_factory.mktemp("data"), hardware_profile=PROFILE)
        with ServerThread(settings) as srv:
            yield srv, hub
    mp.undo()


def test_pull_from_the_hub_then_chat_and_delete(hub_server, model_path):
    server, _ = hub_server
    oll = ollama.Client(host=server.url, timeout=120)
    try:
        parts = list(oll.pull(PULL_NAME, stream=True))
        statuses = [p.status for p in parts]
        assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
        progress = [p for p in parts if p.status == "downloading"]
        size = model_path.stat().st_size
        assert progress and all(p.total == size for p in progress) and progress[-1].completed == size
        assert [p.completed for p in progress] == sorted(p.completed for p in progress)
        assert progress[0].digest.startswith("sha256:")

        names = [m.model for m in oll.list().models]
        assert len(names) == 2 and MODEL in names
        reply = oll.chat(model=PULL_NAME, messages=ASK, options=QUICK)
        assert reply.message.content and reply.model in names and reply.model != MODEL

        assert oll.pull(PULL_NAME).status == "success"  # installed already: nothing to download
        assert [p.status for p in oll.pull(PULL_NAME, stream=True)][-1] == "success"

        assert oll.delete(PULL_NAME).status == "success"
        assert [m.model for m in oll.list().models] == [MODEL]
        assert oll.pull(PULL_NAME).status == "success"  # not streamed: one answer once it is installed
        assert len(oll.list().models) == 2
        assert oll.delete(PULL_NAME).status == "success"
        with pytest.raises(ollama.ResponseError) as err:
            oll.delete(PULL_NAME)
        assert err.value.status_code == 404
    finally:
        oll.close()


def test_pull_errors_come_back_as_response_errors(hub_server):
    server, hub = hub_server
    oll = ollama.Client(host=server.url, timeout=120)
    try:
        with pytest.raises(ollama.ResponseError) as err:
            oll.pull("hf.co/nobody/Nothing-GGUF:Q4_K_M")
        assert err.value.status_code == 404
        with pytest.raises(ollama.ResponseError) as err:
            list(oll.pull(f"{SMOL}:Q8_0", stream=True))
        assert 400 <= err.value.status_code < 500 and "Q4_1" in err.value.error

        # a download that fails once under way: a line with the error, or the status when not streamed
        hub.file(SMOL, FILE).fault = Fault(corrupt_at=12_345)
        with pytest.raises(ollama.ResponseError) as err:
            list(oll.pull(PULL_NAME, stream=True))
        assert "damaged" in err.value.error
        with pytest.raises(ollama.ResponseError) as err:
            oll.pull(PULL_NAME)
        assert err.value.status_code == 502 and "damaged" in err.value.error
        hub.file(SMOL, FILE).fault = Fault()
        assert oll.pull(PULL_NAME).status == "success"  # the failed download goes on
        assert oll.delete(PULL_NAME).status == "success"
    finally:
        hub.file(SMOL, FILE).fault = Fault()
        oll.close()
