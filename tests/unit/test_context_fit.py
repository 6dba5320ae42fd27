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
