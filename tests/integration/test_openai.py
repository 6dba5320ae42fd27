"""The OpenAI-compatible endpoints, exercised with the official openai client."""

import openai
import pytest

MODEL = "smollm2-135m-instruct-q4_1"


@pytest.fixture()
def oai(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed", max_retries=0)
    yield client
    client.close()


def test_models_list(oai):
    assert [m.id for m in oai.models.list()] == [MODEL]


def test_chat_completion(oai):
    r = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What colour is the sky?"}],
        temperature=0,
        max_tokens=40,
    )
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.model == MODEL


def test_streaming_matches_non_streaming(oai):
    msgs = [{"role": "user", "content": "Name three fruits."}]
    whole = oai.chat.completions.create(model=MODEL, messages=msgs, temperature=0, max_tokens=30)
    chunks = list(
        oai.chat.completions.create(
            model=MODEL, messages=msgs, temperature=0, max_tokens=30, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_max_tokens_gives_length(oai):
    r = oai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count to 50."}], temperature=0, max_tokens=4
    )
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 4


def test_content_parts_and_default_model(server):
    import httpx

    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}], "max_tokens": 5}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200 and r.json()["model"] == MODEL


def test_unknown_model_is_a_404_with_the_available_ones(oai):
    with pytest.raises(openai.NotFoundError) as info:
        oai.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    assert MODEL in str(info.value)


def test_invalid_request(oai):
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model=MODEL, messages=[])
    error = info.value.body
    assert error["type"] == "invalid_request_error" and error["param"] == "messages"
    assert error["code"] == "invalid_request_error" and "at least 1" in error["message"]
