"""Learned absolute position embeddings (GPT-2: Radford et al. 2019): one trained vector per position."""

import torch
from torch import nn


class LearnedPosition(nn.Module):
    def __init__(self, max_seq_len: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(max_seq_len, dim))

    def forward(self, positions_BT: torch.Tensor) -> torch.Tensor:
        return self.weight[positions_BT]
