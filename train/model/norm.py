"""LayerNorm (Ba et al. 2016) and RMSNorm (Zhang & Sennrich 2019), both computed in fp32, and Dynamic
Tanh (DyT, Zhu, Chen, He, LeCun & Liu 2025, "Transformers without Normalization", arXiv 2503.10622), the
element-wise weight * tanh(alpha * x) + bias with a learned scalar alpha that replaces them.

Normalising in fp32 and casting back before the weight follows the Llama/HF reference, so bf16
activations lose no precision in the variance. `unit_offset` RMSNorm scales by (1 + weight) with the
weight initialised to zero (Gemma; Qwen3-Next's Qwen3NextRMSNorm), so weight decay pulls it to 1.
GatedRMSNorm is the output norm of Mamba2 and Gated DeltaNet, gated by silu(z).
"""

import torch
import torch.nn.functional as F
from torch import nn

from train.model.config import NormConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, unit_offset: bool = False):
        super().__init__()
        self.eps = eps
        self.unit_offset = unit_offset
        self.weight = nn.Parameter(torch.zeros(dim) if unit_offset else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unit_offset:  # (x * (1 + w)) in fp32, then cast, as Qwen3NextRMSNorm
            return (F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps) * (1.0 + self.weight.float())).type_as(x)
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).type_as(x)
        return normed * self.weight


class GatedRMSNorm(nn.Module):
    """RMSNorm over groups of `group_size` channels, gated by silu(z).
    norm_before_gate=True:  weight * norm(y) * silu(z)   (Gated DeltaNet, Qwen3NextRMSNormGated)
    norm_before_gate=False: weight * norm(y * silu(z))   (Mamba2, MambaRMSNormGated / mamba_ssm's RMSNormGated)"""

    def __init__(self, dim: int, eps: float, group_size: int, norm_before_gate: bool):
        super().__init__()
        self.eps, self.group_size, self.norm_before_gate = eps, group_size, norm_before_gate
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y32, gate = y.float(), F.silu(z.float())
        if not self.norm_before_gate:
            y32 = y32 * gate
        grouped = y32.unflatten(-1, (-1, self.group_size))
        normed = F.rms_norm(grouped, (self.group_size,), eps=self.eps).flatten(-2)
        out = self.weight * normed.type_as(y)
        return (out * gate).type_as(y) if self.norm_before_gate else out


class LayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float, bias: bool):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), (x.shape[-1],), self.weight.float(), bias, self.eps).type_as(x)


class DynamicTanh(nn.Module):
    """DyT(x) = weight * tanh(alpha * x) + bias (arXiv 2503.10622 Algorithm 1): alpha one learned scalar,
    initialised to alpha_0 (`norm.dyt_alpha`), weight to ones, bias to zeros; no statistics over the channels."""

    def __init__(self, dim: int, alpha_init: float):
        super().__init__()
        self.alpha_init = alpha_init
        self.alpha = nn.Parameter(torch.full((1,), alpha_init))
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def reset_extra_parameters(self) -> None:
        nn.init.constant_(self.alpha, self.alpha_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.tanh(self.alpha.float() * x.float()) * self.weight.float() + self.bias.float()).type_as(x)


NORMS = (RMSNorm, LayerNorm, GatedRMSNorm, DynamicTanh)  # what init_weights and the inspector treat as norms


def build_norm(config: NormConfig, dim: int) -> nn.Module:
    if config.kind == "rmsnorm":
        return RMSNorm(dim, config.eps, config.unit_offset)
    if config.kind == "layernorm":
        if config.unit_offset:
            raise ValueError("norm.unit_offset is only supported with norm.kind=rmsnorm")
        return LayerNorm(dim, config.eps, config.bias)
    if config.kind == "dyt":
        return DynamicTanh(dim, config.dyt_alpha)
    raise ValueError(f"norm.kind={config.kind!r} is not supported; use rmsnorm, layernorm or dyt")
