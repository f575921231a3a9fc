"""The held-out rule every data kind shares: items 0, 1/f, 2/f, ... go to validation (evenly spread,
deterministic, at least one when f > 0), by their ordinal in the source's order."""

import math
from typing import Sequence, Tuple


def is_validation(ordinal: int, fraction: float) -> bool:
    return fraction > 0 and (ordinal == 0 or math.floor(ordinal * fraction) > math.floor((ordinal - 1) * fraction))


def split_held_out(items: Sequence, fraction: float) -> Tuple[list, list]:
    """(train, val) of `items` by is_validation."""
    train, val = [], []
    for ordinal, item in enumerate(items):
        (val if is_validation(ordinal, fraction) else train).append(item)
    return train, val
