"""Positional information: additive absolute embeddings (sinusoidal, learned) added to the token
embeddings, or rotary embeddings (rope, yarn) applied to queries and keys inside the mixers."""

from torch import nn

from train.model.config import PositionConfig
from train.model.position.learned import LearnedPosition
from train.model.position.sinusoidal import SinusoidalPosition

ADDITIVE_KINDS = ("sinusoidal", "learned")
ROTARY_KINDS = ("rope", "yarn")
KINDS = ("none",) + ADDITIVE_KINDS + ROTARY_KINDS


def build_additive_position(config: PositionConfig, dim: int, max_seq_len: int) -> nn.Module | None:
    """The module adding absolute position embeddings to token embeddings, or None."""
    if config.kind not in KINDS:
        raise ValueError(f"position.kind={config.kind!r} is not supported; use one of {list(KINDS)}")
    if config.kind == "sinusoidal":
        return SinusoidalPosition(dim)
    if config.kind == "learned":
        return LearnedPosition(max_seq_len, dim)
    return None
