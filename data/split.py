"""The held-out rule every data kind shares: items 0, 1/f, 2/f, ... go to validation (evenly spread,
deterministic, at least one when f > 0), by their ordinal in the source's order.

Fewer than 1/f items cannot be split that way (item 0 alone would be more than f of them, all of a single
book): prepared text then holds out its tail instead, the last f of its characters (split_tail)."""

import math
from typing import List, Sequence, Tuple


def is_validation(ordinal: int, fraction: float) -> bool:
    return fraction > 0 and (ordinal == 0 or math.floor(ordinal * fraction) > math.floor((ordinal - 1) * fraction))


def split_held_out(items: Sequence, fraction: float) -> Tuple[list, list]:
    """(train, val) of `items` by is_validation."""
    train, val = [], []
    for ordinal, item in enumerate(items):
        (val if is_validation(ordinal, fraction) else train).append(item)
    return train, val


def documents_needed(fraction: float) -> int:
    """How many documents the evenly spread rule needs to hold out about `fraction` of them."""
    return math.ceil(1 / fraction) if fraction > 0 else 0


def split_tail(texts: Sequence[str], fraction: float) -> Tuple[List[Tuple[int, str]], List[Tuple[int, str]]]:
    """(train, val) as (index into texts, text) pairs: val is the last `fraction` of all characters (at least
    one), whole texts from the end and the one it cuts split at a line start where it has one before the cut."""
    train, val = [(i, text) for i, text in enumerate(texts)], []
    held = max(1, math.ceil(fraction * sum(map(len, texts))))
    while train and held >= len(train[-1][1]):
        held -= len(train[-1][1])
        val.insert(0, train.pop())
    if train and held:
        index, text = train.pop()
        cut = len(text) - held
        cut = text.rfind("\n", 0, cut) + 1 or cut
        train.append((index, text[:cut]))
        val.insert(0, (index, text[cut:]))
    return train, val
