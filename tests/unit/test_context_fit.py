from tandem.runtime.engine.context import fit_turns, oldest_turn


def msgs(*roles):
    return [{"role": r, "content": f"{r}{i}"} for i, r in enumerate(roles)]


def test_oldest_turn_is_a_user_message_and_its_replies():
    assert oldest_turn(msgs("system", "user", "assistant", "user")) == [1, 2]
    assert oldest_turn(msgs("user", "assistant", "assistant", "user", "assistant", "user")) == [0, 1, 2]
    assert oldest_turn(msgs("system", "user")) == []
    assert oldest_turn(msgs("user")) == []


def test_fit_drops_turns_until_the_count_fits():
    conversation = msgs("system", "user", "assistant", "user", "assistant", "user")
    dropped, n = fit_turns(conversation, count=len, budget=4)
    assert dropped == [1, 2] and n == 4
    dropped, n = fit_turns(conversation, count=len, budget=2)
    assert dropped == [1, 2, 3, 4] and n == 2  # system + the latest user message
    dropped, n = fit_turns(conversation, count=len, budget=1)
    assert dropped == [1, 2, 3, 4] and n == 2  # cannot go below that: the caller refuses it


def test_nothing_dropped_when_it_fits():
    assert fit_turns(msgs("user", "assistant", "user"), count=len, budget=10) == ([], 3)


def test_messages_left_out_before_stay_out_and_eviction_frees_a_chunk():
    from tandem.runtime.engine.context import fit_conversation

    conversation = [{"role": "system", "content": "s"}] + [
        {"role": r, "content": f"{r}{i}"} for i in range(5) for r in ("user", "assistant")
    ] + [{"role": "user", "content": "last"}]
    # fits: only what was left out before stays out (never the system prompt or the latest message)
    dropped, n = fit_conversation(conversation, len, budget=100, target=100, already=[0, 1, 2, 11])
    assert dropped == [1, 2] and n == 10
    # over budget: drop whole turns down to the target, not just to the budget
    dropped, n = fit_conversation(conversation, len, budget=9, target=6, already=[1, 2])
    assert dropped == [1, 2, 3, 4, 5, 6] and n == 6


def test_finding_the_gap_left_by_removed_messages():
    from tandem.runtime.engine.native import MIN_SHIFT_MATCH, _find_gap

    sink, gone, kept = [1, 2, 3], list(range(100, 140)), list(range(200, 200 + MIN_SHIFT_MATCH + 4))
    cached = sink + gone + kept
    prompt = sink + kept + [7, 8]
    assert _find_gap(cached, prompt, 3) == (len(gone), len(kept))
    assert _find_gap(cached, sink + [9] * 30, 3) == (0, 0)  # nothing to reuse after the sink
    short = sink + gone + kept[:MIN_SHIFT_MATCH - 1]
    assert _find_gap(short, prompt, 3)[1] < MIN_SHIFT_MATCH  # too little to be worth a shift


def _one_turn_at_a_time(messages, count, budget):
    """The plain way: drop the oldest turn, count again, until it fits."""
    index, kept, dropped = list(range(len(messages))), list(messages), []
    while count(kept) > budget:
        turn = oldest_turn(kept)
        if not turn:
            break
        dropped += [index[i] for i in turn]
        gone = set(turn)
        kept = [m for i, m in enumerate(kept) if i not in gone]
        index = [x for i, x in enumerate(index) if i not in gone]
    return sorted(dropped), count(kept)


def test_turn_cuts_and_bisection_agree_with_dropping_one_turn_at_a_time():
    import random

    from tandem.runtime.engine.context import turn_cuts

    rng = random.Random(7)
    weight = lambda kept: sum(len(m["content"]) for m in kept)  # noqa: E731
    for _ in range(2000):
        roles = [rng.choice(["system", "user", "assistant", "user"]) for _ in range(rng.randint(0, 14))]
        conversation = [{"role": r, "content": "x" * rng.randint(1, 9)} for r in roles]
        budget = rng.randint(0, 60)
        assert fit_turns(conversation, weight, budget) == _one_turn_at_a_time(conversation, weight, budget)
        cuts, kept = turn_cuts(conversation), list(conversation)
        for cut in cuts:  # each cut is what oldest_turn drops from what the earlier ones left
            turn = oldest_turn(kept)
            assert [kept[i] for i in turn] == [conversation[i] for i in cut]
            kept = [m for i, m in enumerate(kept) if i not in set(turn)]
        assert oldest_turn(kept) == []


def test_bisection_renders_a_handful_of_times_for_a_long_conversation():
    calls = []

    def count(kept):
        calls.append(1)
        return len(kept)

    conversation = [{"role": r, "content": ""} for _ in range(5000) for r in ("user", "assistant")]
    conversation.append({"role": "user", "content": "latest"})
    dropped, n = fit_turns(conversation, count, budget=101)
    assert n == 101 and len(dropped) == 10_001 - 101
    assert len(calls) <= 20  # not one count per dropped turn
