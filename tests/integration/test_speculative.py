"""Speculative decoding on the real SmolLM2 model: lossless, cache-consistent, and self-disabling."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tandem.runtime.engine import ModelWorker, LoadParams, SamplingParams
from tandem.runtime.errors import RuntimeFailure
from tandem.runtime.synth import preset, write_model

CODE = '''def parse_config(path):
    result = {}
    with open(path) as f:
        for line in f:
            key, value = line.split("=", 1)
            result[key.strip()] = value.strip()
    return result
'''
PROMPTS = [
    "Add a comment above each line of this code and output the complete code:\n```python\n" + CODE + "```",
    "Repeat the word 'banana' twenty times.",
    "Count from 1 to 40, separated by commas.",
    "Write a haiku about autumn, then explain it line by line.",
    "List the planets of the solar system, one per line, with one fact each.",
    "Explain photosynthesis to a child.",
    "Translate to French: The cat sleeps on the warm windowsill every afternoon.",
    "Repeat the following text exactly: The committee met on Tuesday to review the budget and agreed to "
    "repair the roof of the town hall before winter.",
]
GREEDY = SamplingParams(temperature=0.0, max_tokens=96)
NEAR_TIE = 0.05  # logits closer than this may round either way between batched and single-token kernels


def params(path, **kw) -> LoadParams:
    return LoadParams(path, n_ctx=2048, flash_attn=True, **kw)


@pytest.fixture(scope="module")
def tiny_draft(tmp_path_factory):
    """A random-weight model with SmolLM2's tokenizer: a compatible draft that is always wrong."""
    return write_model(tmp_path_factory.mktemp("draft") / "tiny.gguf", preset("tiny"), fill="random")


def run(path, messages_list, speculative, draft=None, sampling=GREEDY):
    """Replies to each conversation in a fresh session of its own (its own thread, as the app runs)."""
    def go():
        out = []
        for messages in messages_list:
            s = ModelWorker.open(params(path), draft=params(draft) if draft else None)
            try:
                out.append(s.submit(messages, sampling, speculative=speculative).result())
            finally:
                s.close()
        return out
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(go).result()


def logit_gap(path, messages, prefix, a, b) -> float:
    """|logit(a) - logit(b)| for the token after `prefix`, by plain single-token evaluation."""
    def go():
        import llama_cpp
        import numpy as np

        from tandem.runtime.engine.chat_format import ChatFormatter
        from tandem.runtime.engine.native import NativeDecoder

        llm = llama_cpp.Llama(model_path=str(path), n_ctx=2048, flash_attn=True, verbose=False)
        try:
            d = NativeDecoder(llm)
            d.prefill(ChatFormatter(llm).render(messages).tokens)
            for t in prefix:
                d.decode([t])
            n = llama_cpp.llama_vocab_n_tokens(d.vocab)
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(d.ctx, -1), shape=(n,))
            return abs(float(logits[a]) - float(logits[b]))
        finally:
            llm.close()
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(go).result()


def assert_same_or_near_tie(path, messages, plain, spec):
    if plain.tokens == spec.tokens:
        return True
    i = next((i for i, (x, y) in enumerate(zip(plain.tokens, spec.tokens)) if x != y), None)
    assert i is not None, "one reply is a prefix of the other: a verification bug"
    gap = logit_gap(path, messages, plain.tokens[:i], plain.tokens[i], spec.tokens[i])
    assert gap < NEAR_TIE, f"token {i} differs where the model is not at a tie (gap {gap:.3f})"
    return False


def test_greedy_speculation_gives_the_plain_text(model_path):
    conversations = [[{"role": "user", "content": p}] for p in PROMPTS]
    plain = run(model_path, conversations, "off")
    spec = run(model_path, conversations, "lookup")
    same = sum(assert_same_or_near_tie(model_path, m, a, b) for m, a, b in zip(conversations, plain, spec))
    assert same >= len(PROMPTS) - 1
    drafted = sum(r.stats.drafted_tokens for r in spec)
    accepted = sum(r.stats.accepted_tokens for r in spec)
    assert drafted > 30 and 0 < accepted < drafted  # drafts were verified, accepted and rejected
    assert all(r.stats.drafted_tokens == 0 for r in plain)


def test_sampled_speculation_verifies_with_the_targets_sampler(model_path):
    """At a temperature the verify loop draws from the target's own sampler chain at each drafted
    position: a copy is still drafted, accepted and written out."""
    conversations = [[{"role": "user", "content": PROMPTS[0]}]]
    sampled = SamplingParams(temperature=0.3, seed=7, max_tokens=96)
    r = run(model_path, conversations, "lookup", sampling=sampled)[0]
    assert r.stats.drafted_tokens > 0 and r.stats.accepted_tokens > 0
    assert "def parse_config(path):" in r.text


@pytest.mark.parametrize("speculative", ["lookup", "draft"])
def test_continuing_after_a_speculative_reply_gives_the_plain_text(model_path, tiny_draft, speculative):
    """Rejected drafts leave no trace in the cache: the next turn reads it as plain decoding would.
    The random draft is always wrong, so its drafts are always rejected."""
    first = [{"role": "user", "content": PROMPTS[0]}]

    def conversation():
        s = ModelWorker.open(params(model_path), draft=params(tiny_draft) if speculative == "draft" else None)
        try:
            r1 = s.submit(first, GREEDY, speculative=speculative).result()
            second = first + [{"role": "assistant", "content": r1.text},
                              {"role": "user", "content": "Now repeat only the first line of the code."}]
            r2 = s.submit(second, GREEDY, speculative="off").result()
            return r1, r2, second
        finally:
            s.close()
    with ThreadPoolExecutor(max_workers=1) as pool:
        spec1, spec2, second = pool.submit(conversation).result()
    assert spec1.stats.drafted_tokens > 0
    if speculative == "draft":
        assert spec1.stats.drafted_tokens > spec1.stats.accepted_tokens  # drafts were rejected
    assert spec2.stats.cached_tokens > spec1.stats.prompt_tokens  # the cache was reused, not rebuilt
    fresh = run(model_path, [second], "off")[0]  # the same history evaluated from nothing
    assert_same_or_near_tie(model_path, second, fresh, spec2)


def test_a_draft_that_is_always_wrong_switches_itself_off(model_path, tiny_draft):
    conversations = [[{"role": "user", "content": p}] for p in PROMPTS[:3]]
    plain = run(model_path, conversations, "off")
    spec = run(model_path, conversations, "draft", draft=tiny_draft)
    for m, a, b in zip(conversations, plain, spec):
        assert_same_or_near_tie(model_path, m, a, b)
        assert b.stats.spec_source == "draft:tiny.gguf"
        assert b.stats.drafted_tokens <= max(8, b.stats.completion_tokens // 8)  # probes only, backing off
        assert b.stats.accepted_tokens <= b.stats.drafted_tokens // 4


def test_the_model_as_its_own_draft_is_always_right_but_not_worth_it(model_path):
    conversations = [[{"role": "user", "content": PROMPTS[2]}]]
    plain = run(model_path, conversations, "off")[0]
    spec = run(model_path, conversations, "draft", draft=model_path)[0]
    assert_same_or_near_tie(model_path, conversations[0], plain, spec)
    assert spec.stats.drafted_tokens > 0 and spec.stats.accepted_tokens == spec.stats.drafted_tokens
    assert spec.stats.drafted_tokens <= 4  # measured once: a draft as slow as the model never pays


def test_a_draft_with_another_vocabulary_is_refused(model_path, gemma_path):
    with pytest.raises(RuntimeFailure, match="cannot draft for this model"):
        ModelWorker.open(params(model_path), draft=params(gemma_path))


def test_speculative_mode_is_checked(engine):
    with pytest.raises(ValueError, match="speculative"):
        engine.submit([{"role": "user", "content": "Hi"}], GREEDY, speculative="always")
    with pytest.raises(RuntimeFailure, match="No draft model"):
        engine.submit([{"role": "user", "content": "Hi"}], GREEDY, speculative="draft").result()


def test_the_app_offers_installed_drafts_and_runs_without_one_that_cannot_serve(tmp_path, tiny_draft, gemma_path):
    from dataclasses import replace

    import httpx

    from tandem.app.server import ServerThread
    from tandem.app.services import Services
    from tandem.runtime.model_info import inspect_model
    from tests.conftest import make_settings

    services = Services.open(make_settings(tmp_path))
    try:
        models = services.models
        models.store.upsert_model({"id": "tiny", "name": "tiny", "path": str(tiny_draft), "source": "local",
                                   "size_bytes": tiny_draft.stat().st_size, "is_default": 0})
        target = models.resolve(None)
        assert [d for d, _, _ in models.drafts_for(target)] == ["tiny"]
        info = inspect_model(Path(target["path"]))
        plan = models.plan_for(target, dry_run=False)
        # a draft whose vocabulary differs (Gemma's): the model still loads, with prompt lookup
        wrong = replace(plan, speculative="draft:gemma", draft={"model": "gemma", "path": str(gemma_path),
                                                                "n_gpu_layers": 0})
        session, used = models._open(target, info, wrong)
        session.close()
        assert used.speculative == "prompt_lookup" and used.draft is None
        assert any("could not be used" in r and "cannot draft" in r for r in used.reasons)
    finally:
        services.close()
    with ServerThread(make_settings(tmp_path)) as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
        listed = {m["id"]: m for m in client.get("/api/models").json()}
        assert listed["smollm2-135m-instruct-q4_1"]["drafts"] == ["tiny"]
        assert listed["tiny"]["drafts"] == []
