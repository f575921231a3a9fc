"""Learned absolute position embeddings (GPT-2: Radford et al. 2019): one trained vector per position."""

from torch import nn


class LearnedPosition(nn.Embedding):
    """A table [max_seq_len, dim] looked up by position; an nn.Embedding, so the optimizer treats it as one."""

    def __init__(self, max_seq_len: int, dim: int):
        super().__init__(max_seq_len, dim)
