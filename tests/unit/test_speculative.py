"""The draft controller and prompt lookup: pure logic, no model."""

from __future__ import annotations

from tandem.runtime.engine.speculative import Controller, PromptLookup


def measured(step=0.01, scale=1.0) -> Controller:
    c = Controller()
    c.plain_step(step)
    c.scale = scale
    c.measured = True
    return c


def test_nothing_is_drafted_before_a_plain_step_is_timed():
    assert Controller().choose() == 0


def test_long_drafts_when_they_are_accepted_and_none_when_rejected():
    c = measured()
    for _ in range(6):
        c.verified(8, 8, 0.01 * c.verify_cost(8))
    assert c.p() > 0.95 and c.choose() == 8
    for _ in range(6):
        c.verified(2, 0, 0.01 * c.verify_cost(2))
    assert c.p() < 0.2 and c.choose() == 0


def test_the_cost_of_a_batch_is_learnt():
    c = measured()
    c.verified(4, 4, 0.01 * (1 + 3 * (c.a + c.b * 4)))  # verifying costs three times the assumed
    assert 1.5 < c.scale < 3.5


def test_probes_back_off_while_they_fail_and_return_when_one_succeeds():
    c = measured()
    c._counts[None] = (0.0, 10.0)  # acceptance near zero
    plain_steps = 0
    while c.choose() == 0:
        plain_steps += 1
    assert plain_steps == c.probe_every - 1 == 11
    c.verified(1, 0, 0.02)
    assert c.probe_every == 24
    for _ in range(1000):
        if c.choose():
            c.verified(1, 0, 0.02)
    assert c.probe_every == 256
    while not c.choose():
        pass
    c.verified(1, 1, 0.02)
    assert c.probe_every == 12


def test_a_draft_as_slow_as_the_model_is_never_probed():
    c = measured()
    assert all(c.choose(draft_s=0.01) == 0 for _ in range(100))
    assert c.choose(draft_s=None) == 2  # unknown draft cost: draft two tokens to measure it


def test_lookup_proposes_what_followed_the_last_ngram():
    lookup = PromptLookup()
    context = [1, 2, 3, 4, 5, 6, 7, 9, 9, 2, 3, 4]
    assert lookup.propose(context, 3) == [5, 6, 7]
    assert lookup.bucket == 0  # a 3-token match
    assert lookup.propose(context + [8], 3) == []  # [3, 4, 8] never occurred
    long = list(range(100, 140))
    assert lookup.propose(long + [0] + long[:20], 4) == long[20:24]
    assert lookup.bucket == 16  # 20 tokens of match: a copy in progress


def test_lookup_follows_a_growing_context_and_a_new_one():
    lookup = PromptLookup()
    ctx = [5, 6, 7, 8, 1, 5, 6]
    assert lookup.propose(ctx, 2) == [7, 8]
    ctx += [7, 8, 9]
    assert lookup.propose(ctx, 2) == []
    assert lookup.propose([1, 2, 3, 1, 2], 1) == [3]  # another conversation: indexed afresh
