"""Mamba-2 token mixer (Dao & Gu 2024, "Transformers are SSMs", arXiv 2405.21060), written against
transformers' Mamba2Mixer torch path and mamba_ssm's Mamba2 module.

in_proj gives [z (gate), xBC, dt]; xBC goes through a short causal conv + silu (causal_conv.py) and
splits into x (num_heads * head_dim), B and C (num_groups * state_size each); dt = softplus(dt +
dt_bias), clamped to [dt_limit_min, dt_limit_max]; A = -exp(A_log), one scalar per head. The SSD
recurrence h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T, y_t = h_t C_t + D x_t is gated linear
attention with q = C, k = dt B, v = x (linear_scan.py: chunked in training, recurrent per decoded
token; mamba_ssm's SSD kernel on CUDA where installed, kernels.py). Output: RMSNorm(y * silu(z)) per
group (norm before gate = False, as mamba_ssm), out_proj.

Decode state: conv state [B, conv_dim, kernel-1] and SSM state [B, H, state_size, head_dim], fixed size.
Documents: the conv taps and the SSM state stop at document starts. A split sequence (context parallelism)
runs the PyTorch conv and scan (causal_conv.py, linear_scan.scan_window), not the kernels.
"""

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from train.model.config import MixerConfig, ModelConfig
from train.model.documents import Documents, check_no_documents_with_cache, is_split
from train.model.kv_cache import KVCache
from train.model.mixer import kernels
from train.model.mixer.causal_conv import CausalConv1d
from train.model.mixer.linear_scan import chunked_linear_attention, recurrent_linear_attention, scan_window
from train.model.norm import GatedRMSNorm
from train.model.registry import register_mixer


@register_mixer("mamba2")
class Mamba2(nn.Module):
    def __init__(self, config: MixerConfig, model: ModelConfig, layer_idx: int):
        super().__init__()
        c = config.mamba2
        if c.num_heads % c.num_groups:
            raise ValueError(f"mamba2.num_heads={c.num_heads} must be a multiple of num_groups={c.num_groups}")
        self.config, self.layer_idx, self.linear_kernels = c, layer_idx, model.linear_kernels
        self.num_heads, self.head_dim, self.state_size, self.num_groups = c.num_heads, c.head_dim, c.state_size, c.num_groups
        self.inner = c.num_heads * c.head_dim
        self.conv_dim = self.inner + 2 * c.num_groups * c.state_size
        self.in_proj = nn.Linear(model.dim, self.inner + self.conv_dim + c.num_heads, bias=c.bias)
        self.conv1d = CausalConv1d(self.conv_dim, c.conv_kernel, bias=c.conv_bias, linear_kernels=model.linear_kernels)
        self.dt_bias = nn.Parameter(torch.zeros(c.num_heads))
        self.A_log = nn.Parameter(torch.zeros(c.num_heads))
        self.D = nn.Parameter(torch.ones(c.num_heads))
        self.norm = GatedRMSNorm(self.inner, model.norm.eps, self.inner // c.num_groups, norm_before_gate=False) if c.gated_norm else None
        self.out_proj = nn.Linear(self.inner, model.dim, bias=c.bias)

    @torch.no_grad()
    def reset_extra_parameters(self) -> None:
        """mamba_ssm's init: A = 1..H, D = 1, dt log-uniform in [dt_min, dt_max] (floored), dt_bias =
        softplus^-1(dt); default conv init."""
        c, device = self.config, self.A_log.device
        self.A_log.copy_(torch.arange(1, self.num_heads + 1, dtype=torch.float32, device=device).log())
        nn.init.ones_(self.D)
        dt = torch.exp(torch.rand(self.num_heads, device=device) * (math.log(c.dt_max) - math.log(c.dt_min)) + math.log(c.dt_min)).clamp(min=c.dt_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.conv1d.reset_parameters()

    def forward(self, x_BTD, positions_BT, documents: Documents | None = None, cache: KVCache | None = None,
                recurrent: bool = False):
        check_no_documents_with_cache(documents, cache)
        B, T, _ = x_BTD.shape
        H, P, N, G = self.num_heads, self.head_dim, self.state_size, self.num_groups
        z_BTI, xBC_BTC, dt_BTH = self.in_proj(x_BTD).split([self.inner, self.conv_dim, H], dim=-1)
        conv_state = None if cache is None else cache.get_state(self.layer_idx, "conv")
        xBC_BTC, conv_state = self.conv1d(xBC_BTC, documents, conv_state)
        x_BTI, B_BTGN, C_BTGN = xBC_BTC.split([self.inner, G * N, G * N], dim=-1)
        A_H = -self.A_log.float().exp()
        state = None if cache is None else cache.get_state(self.layer_idx, "recurrent")
        chunked = not (recurrent or (cache is not None and T == 1))
        if chunked and kernels.runs(self.linear_kernels, "mamba_ssm", x_BTI) and not is_split(documents):
            y_BTHP, state = kernels.ssd(
                x_BTI.view(B, T, H, P), dt_BTH, A_H, B_BTGN.view(B, T, G, N), C_BTGN.view(B, T, G, N), self.D, self.dt_bias,
                (self.config.dt_limit_min, self.config.dt_limit_max), self.config.chunk_size, documents, state,
                return_final_states=cache is not None)
            y_BTI = y_BTHP.reshape(B, T, self.inner)
        else:
            y_BTI, state = self.torch_scan(x_BTI, dt_BTH, A_H, B_BTGN, C_BTGN, documents, state, chunked)
        if cache is not None:
            cache.set_state(self.layer_idx, "conv", conv_state)
            cache.set_state(self.layer_idx, "recurrent", state)
        if self.norm is not None:
            y_BTI = self.norm(y_BTI, z_BTI)
        else:
            y_BTI = y_BTI * F.silu(z_BTI.float())
        return self.out_proj(y_BTI.to(x_BTD.dtype))

    def torch_scan(self, x_BTI, dt_BTH, A_H, B_BTGN, C_BTGN, documents, state, chunked: bool):
        """The SSD scan as gated linear attention in PyTorch: y + D x [B, T, inner] (fp32) and the new state."""
        B, T, _ = x_BTI.shape
        H, P, N, G = self.num_heads, self.head_dim, self.state_size, self.num_groups
        dt_BTH = F.softplus(dt_BTH.float() + self.dt_bias.float()).clamp(self.config.dt_limit_min, self.config.dt_limit_max)
        x_BHTP = x_BTI.view(B, T, H, P).transpose(1, 2).float()
        B_BHTN = B_BTGN.view(B, T, G, N).repeat_interleave(H // G, dim=2).transpose(1, 2).float()
        C_BHTN = C_BTGN.view(B, T, G, N).repeat_interleave(H // G, dim=2).transpose(1, 2).float()
        dt_BHT = dt_BTH.transpose(1, 2)
        scan = functools.partial(chunked_linear_attention, chunk=self.config.chunk_size) if chunked else \
            recurrent_linear_attention
        y_BHTP, state = scan_window(scan, documents, C_BHTN, B_BHTN * dt_BHT[..., None], x_BHTP, dt_BHT * A_H[:, None],
                                    state=state)
        y_BHTP = y_BHTP + self.D.float()[:, None, None] * x_BHTP
        return y_BHTP.transpose(1, 2).reshape(B, T, self.inner), state

    def state_bytes(self, dtype: torch.dtype) -> int:
        return self.conv1d.state_bytes(dtype) + self.num_heads * self.head_dim * self.state_size * dtype.itemsize

    def cache_bytes(self, context: int, dtype: torch.dtype) -> int:
        """Constant: conv state + SSM state, at any context."""
        return self.state_bytes(dtype)

    def mha_cache_bytes(self, context: int, dtype: torch.dtype) -> int:
        """MHA with num_heads heads of head_dim (keys and values)."""
        return 2 * self.num_heads * self.head_dim * dtype.itemsize * context

    def score_flops_per_token(self, context: int) -> int:
        """Recurrent-form count, independent of the context: the state update dt x B^T and the read
        h C, 2 FLOPs per multiply-add, x3 for forward + backward."""
        return 12 * self.num_heads * self.head_dim * self.state_size
