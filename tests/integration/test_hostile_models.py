"""Hostile model files against a real server: a chat template that would hang or exhaust memory,
and headers whose counts would allocate without bound. Each gets a clear error of its own within
seconds; the server keeps serving, lists every other model, and the built-in model still answers."""

import shutil
import struct

import httpx
import numpy as np
import pytest
from gguf import GGUFValueType, GGUFWriter

from tandem.app.server import ServerThread
from tandem.runtime.embedded import MODEL_ID
from tandem.runtime.synth import preset, write_model
from tests.conftest import make_settings, read_sse

TIMEOUT_S = 30  # a hang fails the test through httpx's timeout

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
NESTED = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"

# refused when the model loads (its first render breaks a limit): (template, what the error names)
AT_LOAD = {
    "nested-loops": (NESTED + CHATML, "steps"),
    "repeat": ("{{ 'x' * 10**10 }}" + CHATML, "repeated text"),
    "range-list": ("{{ range(10**9)|list }}" + CHATML, "range of 1,000,000,000"),
    "huge-output": ("{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}" + CHATML, "prompt of more than"),
}
# normal until a conversation's last message is "hi": the model loads, that request fails
AT_REQUEST = "{% if messages[-1]['content'] == 'hi' %}" + NESTED + "{% endif %}" + CHATML


def field_offset(data: bytes, key: str) -> int:
    """Where the value of metadata `key` starts (after its key string and type)."""
    name = key.encode()
    at = data.index(struct.pack("<Q", len(name)) + name)
    return at + 8 + len(name) + 4


def huge_block_count(path, valid: bytes) -> None:
    w = GGUFWriter(path, "llama")
    w.add_uint64("llama.block_count", 1 << 40)  # the probe: a per-layer table of a trillion entries
    w.add_embedding_length(64)
    w.add_head_count(4)
    w.add_key_value("tokenizer.ggml.model", "gpt2", GGUFValueType.STRING)
    w.add_tensor("blk.0.attn_norm.weight", np.ones(64, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def huge_tensor_count(path, valid: bytes) -> None:
    path.write_bytes(valid[:8] + struct.pack("<Q", 1 << 18) + valid[16:])


def huge_array_length(path, valid: bytes) -> None:
    at = field_offset(valid, "tokenizer.ggml.tokens") + 4  # past the array's item type
    path.write_bytes(valid[:at] + struct.pack("<Q", 1 << 21) + valid[at + 8:])


def truncated(path, valid: bytes) -> None:
    path.write_bytes(valid[:200_000])  # inside the token list


DAMAGED = {"huge-block-count": (huge_block_count, "block_count"), "huge-tensor-count": (huge_tensor_count, "tensor"),
           "huge-array-length": (huge_array_length, "array length"), "truncated": (truncated, "truncated")}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    paths = {name: write_model(d / f"{name}.gguf", preset("tiny"), chat_template=t) for name, (t, _) in AT_LOAD.items()}
    paths["at-request"] = write_model(d / "at-request.gguf", preset("tiny"), chat_template=AT_REQUEST)
    paths["plain"] = write_model(d / "plain.gguf", preset("tiny"))
    return paths


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with ServerThread(make_settings(tmp_path_factory.mktemp("data"), max_tokens=4)) as srv:
        with httpx.Client(base_url=srv.url, timeout=TIMEOUT_S) as c:
            yield c


def import_file(client, path) -> dict:
    r = client.post("/api/hub/import", json={"path": str(path)})
    assert r.status_code == 200, r.text
    return r.json()


def register(client, path) -> str:
    [row] = import_file(client, path)["registered"]
    return row["id"]


def ask(client, model_id: str | None, content: str = "hi"):
    """(status, JSON error or the SSE events) of one message to a new conversation with the model."""
    r = client.post("/api/conversations", json={"model_id": model_id} if model_id else {})
    assert r.status_code == 201, r.text
    with client.stream("POST", f"/api/conversations/{r.json()['id']}/messages",
                       json={"content": content, "max_tokens": 4}) as reply:
        if reply.status_code != 200:
            reply.read()
            return reply.status_code, reply.json()["error"]
        return 200, list(read_sse(reply))


def assert_fails_clearly(client, model_id: str, names: str, content: str = "hi") -> str:
    status, body = ask(client, model_id, content)
    if status == 200:  # refused once the reply began: an error event
        errors = [data["error"] for event, data in body if event == "error"]
        assert errors, body
        status, body = 409, errors[0]
    assert status == 409, body
    assert names in body["message"], body["message"]
    return body["code"]


def assert_server_fine(client, *expected_ids: str) -> None:
    assert client.get("/api/health").json()["status"] == "ok"
    for url in ("/api/models", "/api/hub/models"):
        r = client.get(url)
        assert r.status_code == 200, r.text
        listed = {m["id"] for m in r.json()}
        assert {MODEL_ID, *expected_ids} <= listed


def assert_builtin_answers(client) -> None:
    status, events = ask(client, None, "What is 2 + 2?")
    assert status == 200 and events[-1][0] == "done", events


@pytest.mark.parametrize("name", list(AT_LOAD))
def test_a_template_breaking_a_limit_refuses_to_load(client, models, name):
    model_id = register(client, models[name])
    code = assert_fails_clearly(client, model_id, AT_LOAD[name][1])
    assert code == "unsafe_chat_template"
    assert_server_fine(client, model_id)


def test_a_template_breaking_a_limit_in_one_conversation_fails_that_request(client, models):
    model_id = register(client, models["at-request"])
    status, events = ask(client, model_id, "hello")
    assert status == 200 and events[-1][0] == "done"  # the model loaded and answers others
    assert assert_fails_clearly(client, model_id, "steps") == "unsafe_chat_template"
    assert_server_fine(client, model_id)
    status, events = ask(client, model_id, "hello again")
    assert status == 200 and events[-1][0] == "done"
    assert_builtin_answers(client)


@pytest.mark.parametrize("name", list(DAMAGED))
def test_a_damaged_header_is_reported_for_that_model_only(client, models, tmp_path, name):
    damage, names = DAMAGED[name]
    valid = models["plain"].read_bytes()
    hostile = tmp_path / f"{name}.gguf"
    damage(hostile, valid)
    result = import_file(client, hostile)  # refused outright, with the reason
    assert not result["registered"] and names in result["skipped"][0]["reason"], result
    # a file that turns hostile after it was registered (replaced on disk)
    path = tmp_path / f"{name}-later.gguf"
    shutil.copyfile(models["plain"], path)
    model_id = register(client, path)
    damage(path, valid)
    assert_server_fine(client, model_id)
    info = client.get(f"/api/models/{model_id}/info")
    assert info.status_code == 409 and names in info.json()["error"]["message"]
    assert_fails_clearly(client, model_id, names)
    assert_server_fine(client, model_id)


def test_the_built_in_model_still_answers(client):
    assert_builtin_answers(client)
    assert_server_fine(client)
