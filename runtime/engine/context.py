"""Fitting a conversation into the context window by leaving out its oldest whole turns.

System messages and the latest user message always stay; a turn (a user message and the replies
that follow it) goes as a whole, so roles keep alternating for templates that insist on it.
"""

from __future__ import annotations

from typing import Callable


def oldest_turn(messages: list[dict]) -> list[int]:
    """Indices of the oldest droppable turn, or [] when only the latest user message is left."""
    candidates = [i for i, m in enumerate(messages) if m["role"] != "system"]
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if not candidates or candidates[0] == last_user:
        return []
    first = candidates[0]
    turn = [first]
    for i in range(first + 1, len(messages)):
        if messages[i]["role"] != "assistant" or i == last_user:
            break
        turn.append(i)
    return turn


def fit_turns(messages: list[dict], count: Callable[[list[dict]], int], budget: int) -> tuple[list[int], int]:
    """Drop the oldest turns until `count(kept) <= budget`.

    Returns (indices of the dropped messages in the original list, token count of what is kept).
    The result may still be over budget when only the latest user message is left.
    """
    index = list(range(len(messages)))
    kept = list(messages)
    dropped: list[int] = []
    n = count(kept)
    while n > budget:
        turn = oldest_turn(kept)
        if not turn:
            break
        dropped += [index[i] for i in turn]
        kept = [m for i, m in enumerate(kept) if i not in turn]
        index = [x for i, x in enumerate(index) if i not in turn]
        n = count(kept)
    return sorted(dropped), n
