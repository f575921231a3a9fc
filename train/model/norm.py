"""LayerNorm (Ba et al. 2016) and RMSNorm (Zhang & Sennrich 2019), both computed in fp32.

Normalising in fp32 and casting back before the weight follows the Llama/HF reference, so bf16
activations lose no precision in the variance.
"""

import torch
import torch.nn.functional as F
from torch import nn

from train.model.config import NormConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).type_as(x)
        return normed * self.weight


class LayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float, bias: bool):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), (x.shape[-1],), self.weight.float(), bias, self.eps).type_as(x)


def build_norm(config: NormConfig, dim: int) -> nn.Module:
    if config.kind == "rmsnorm":
        return RMSNorm(dim, config.eps)
    if config.kind == "layernorm":
        return LayerNorm(dim, config.eps, config.bias)
    raise ValueError(f"norm.kind={config.kind!r} is not supported; use rmsnorm or layernorm")
