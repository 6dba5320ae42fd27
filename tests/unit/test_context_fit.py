from runtime.engine.context import fit_turns, oldest_turn


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
    from runtime.engine.context import fit_conversation

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
    from runtime.engine.native import MIN_SHIFT_MATCH, _find_gap

    sink, gone, kept = [1, 2, 3], list(range(100, 140)), list(range(200, 200 + MIN_SHIFT_MATCH + 4))
    cached = sink + gone + kept
    prompt = sink + kept + [7, 8]
    assert _find_gap(cached, prompt, 3) == (len(gone), len(kept))
    assert _find_gap(cached, sink + [9] * 30, 3) == (0, 0)  # nothing to reuse after the sink
    short = sink + gone + kept[:MIN_SHIFT_MATCH - 1]
    assert _find_gap(short, prompt, 3)[1] < MIN_SHIFT_MATCH  # too little to be worth a shift
