"""Sinusoidal absolute positions (Vaswani et al. 2017, "Attention Is All You Need", sec. 3.5):
PE[p, 2i] = sin(p / 10000^(2i/D)), PE[p, 2i+1] = cos(p / 10000^(2i/D)). Computed from the positions,
so there is no table and no maximum length."""

import torch
from torch import nn


class SinusoidalPosition(nn.Module):
    def __init__(self, dim: int, base: float = 10000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"sinusoidal positions need an even model dim, got dim={dim}")
        self.dim = dim
        self.base = base

    def forward(self, positions_BT: torch.Tensor) -> torch.Tensor:
        inv_freq = self.base ** (-torch.arange(0, self.dim, 2, device=positions_BT.device).float() / self.dim)
        angles_BTF = positions_BT[..., None].float() * inv_freq
        # interleave so that even dims get sin and odd dims get cos, as in the paper
        return torch.stack([angles_BTF.sin(), angles_BTF.cos()], dim=-1).flatten(-2)
