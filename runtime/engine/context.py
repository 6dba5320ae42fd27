"""Fitting a conversation into the context window by leaving out its oldest whole turns.

System messages and the latest user message always stay; a turn (a user message and the replies
that follow it) goes as a whole, so roles keep alternating for templates that insist on it.
"""

from __future__ import annotations

from dataclasses import dataclass
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
        if messages[i]["role"] not in ("assistant", "tool") or i == last_user:
            break
        turn.append(i)
    return turn


def turn_cuts(messages: list[dict]) -> list[list[int]]:
    """The droppable turns, oldest first, as lists of indices: what repeated oldest_turn calls
    drop, found in one pass (everything before a turn is gone when it is dropped, so what follows
    it in the kept list is what follows it here)."""
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    cuts: list[list[int]] = []
    i, n = 0, len(messages)
    while True:
        while i < n and messages[i]["role"] == "system":
            i += 1
        if i >= n or i == last_user:
            return cuts
        turn = [i]
        i += 1
        while i < n and messages[i]["role"] in ("assistant", "tool") and i != last_user:
            turn.append(i)
            i += 1
        cuts.append(turn)


def fit_turns(messages: list[dict], count: Callable[[list[dict]], int], budget: int) -> tuple[list[int], int]:
    """Drop the fewest oldest turns so that `count(kept) <= budget`.

    Returns (indices of the dropped messages in the original list, token count of what is kept).
    The result may still be over budget when only the latest user message is left. Dropping more
    turns never makes the rest longer, so the number of turns is found by bisection: a handful of
    renders, not one per turn, whatever the length of the conversation.
    """
    n = count(messages)
    if n <= budget:
        return [], n
    cuts = turn_cuts(messages)

    def without(k: int) -> tuple[list[int], list[dict]]:
        gone = {i for cut in cuts[:k] for i in cut}
        return sorted(gone), [m for i, m in enumerate(messages) if i not in gone]

    lo, hi = 1, len(cuts)  # the answer lies in [lo, hi]; hi: everything droppable
    best = None
    while lo <= hi:
        mid = (lo + hi) // 2
        dropped, kept = without(mid)
        n_mid = count(kept)
        if n_mid <= budget:
            best, hi = (dropped, n_mid), mid - 1
        else:
            lo = mid + 1
    if best is None:
        dropped, kept = without(len(cuts))
        return dropped, count(kept)
    return best


POLICIES = ("sink_window", "drop_turns", "stop")
POLICY_NAMES = {
    "sink_window": "Keep the start, slide the rest",
    "drop_turns": "Drop the oldest turns",
    "stop": "Stop at the limit",
}


@dataclass(frozen=True)
class ContextPolicy:
    """What to do when a conversation outgrows the context.

    sink_window: keep the first tokens (the system prompt, at least `sink_tokens`: the attention
        sinks), leave out the oldest turns after them and shift the kept cache into place, so
        nothing is evaluated again; a reply that fills the context shifts and goes on.
    drop_turns: leave out the oldest whole turns and evaluate the kept ones again.
    stop: refuse a conversation that does not fit (ContextOverflow, saying by how much).
    evict_chunk: tokens freed beyond what is needed at each eviction, so that the next turns fit
        without another one (0: an eighth of the context for sink_window, a quarter otherwise).
    """

    policy: str = "stop"
    sink_tokens: int = 4
    evict_chunk: int = 0

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"context policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.sink_tokens < 0 or self.evict_chunk < 0:
            raise ValueError("sink_tokens and evict_chunk must be 0 or more")

    def chunk(self, n_ctx: int) -> int:
        if self.evict_chunk:
            return min(self.evict_chunk, n_ctx // 2)
        return n_ctx // 8 if self.policy == "sink_window" else n_ctx // 4


def fit_conversation(messages: list[dict], count: Callable[[list[dict]], int], budget: int, target: int,
                     already: tuple[int, ...] | list[int] = ()) -> tuple[list[int], int]:
    """Leave out the messages in `already` (left out before: eviction only moves forward), then,
    if the rest is over `budget`, the oldest whole turns until it is at most `target` tokens.

    Returns (dropped indices in the original list, token count of what is kept)."""
    gone = sorted({i for i in already if 0 <= i < len(messages) and messages[i]["role"] != "system"})
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    gone = [i for i in gone if i != last_user]
    gone_set = set(gone)
    index = [i for i in range(len(messages)) if i not in gone_set]
    kept = [messages[i] for i in index]
    n = count(kept)
    if n <= budget:
        return gone, n
    more, n = fit_turns(kept, count, target)
    return sorted(gone + [index[i] for i in more]), n
