"""Gated DeltaNet token mixer as in Qwen3-Next (transformers' Qwen3NextGatedDeltaNet; Yang, Kautz &
Hatamizadeh 2024, arXiv 2412.06464).

x -> in_proj_qkvz (q, k, v, output gate z) and in_proj_ba (beta logits b, decay input a), laid out
per key-head group as in Qwen3-Next / Megatron; a short causal conv + silu over [q, k, v]
(causal_conv.py); L2-normalised q and k (q scaled by K^-1/2); beta = sigmoid(b); log decay
g = -exp(A_log) * softplus(a + dt_bias) (Mamba2-style); the gated delta rule (delta_rule.py),
chunked in training (fla's kernel on CUDA where installed, kernels.py) and recurrent per decoded
token; a gated RMSNorm per value head, norm(y) * silu(z); out_proj. Each key head serves num_value_heads / num_key_heads value heads.

Decode state: conv state [B, 2*Hk*K + Hv*V, kernel-1] and delta-rule state [B, Hv, K, V], fixed size.
Documents: the conv taps and the state stop at document starts. A split sequence (context parallelism)
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
from train.model.mixer.delta_rule import chunked_delta_rule, recurrent_delta_rule
from train.model.mixer.linear_scan import scan_window
from train.model.norm import GatedRMSNorm
from train.model.registry import register_mixer


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(sum x^2 + eps), the FLA / transformers `l2norm`."""
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)


@register_mixer("gated_deltanet")
class GatedDeltaNet(nn.Module):
    def __init__(self, config: MixerConfig, model: ModelConfig, layer_idx: int):
        super().__init__()
        c = config.gated_deltanet
        if c.num_value_heads % c.num_key_heads:
            raise ValueError(f"gated_deltanet.num_value_heads={c.num_value_heads} must be a multiple of num_key_heads={c.num_key_heads}")
        self.layer_idx, self.chunk_size, self.linear_kernels = layer_idx, c.chunk_size, model.linear_kernels
        self.num_k_heads, self.num_v_heads, self.k_dim, self.v_dim = c.num_key_heads, c.num_value_heads, c.key_head_dim, c.value_head_dim
        key_dim, value_dim = c.num_key_heads * c.key_head_dim, c.num_value_heads * c.value_head_dim
        self.in_proj_qkvz = nn.Linear(model.dim, 2 * key_dim + 2 * value_dim, bias=False)
        self.in_proj_ba = nn.Linear(model.dim, 2 * c.num_value_heads, bias=False)
        self.conv1d = CausalConv1d(2 * key_dim + value_dim, c.conv_kernel, bias=False, linear_kernels=model.linear_kernels)
        self.dt_bias = nn.Parameter(torch.ones(c.num_value_heads))
        self.A_log = nn.Parameter(torch.zeros(c.num_value_heads))
        self.norm = GatedRMSNorm(c.value_head_dim, model.norm.eps, c.value_head_dim, norm_before_gate=True)
        self.out_proj = nn.Linear(value_dim, model.dim, bias=False)

    @torch.no_grad()
    def reset_extra_parameters(self) -> None:
        """As transformers' Qwen3Next init: dt_bias = 1, A ~ U(0.01, 16); default conv init."""
        nn.init.ones_(self.dt_bias)
        self.A_log.copy_(torch.empty_like(self.A_log).uniform_(0.01, 16).log())
        self.conv1d.reset_parameters()

    def split_heads(self, x_BTD):
        """q, k [B,T,Hk,K]; v, z [B,T,Hv,V]; b, a [B,T,Hv] from the per-key-head-group layout."""
        B, T, _ = x_BTD.shape
        Hk, r, K, V = self.num_k_heads, self.num_v_heads // self.num_k_heads, self.k_dim, self.v_dim
        q, k, v, z = self.in_proj_qkvz(x_BTD).view(B, T, Hk, 2 * K + 2 * r * V).split([K, K, r * V, r * V], dim=-1)
        b, a = self.in_proj_ba(x_BTD).view(B, T, Hk, 2 * r).split([r, r], dim=-1)
        Hv = self.num_v_heads
        return q, k, v.reshape(B, T, Hv, V), z.reshape(B, T, Hv, V), b.reshape(B, T, Hv), a.reshape(B, T, Hv)

    def forward(self, x_BTD, positions_BT, documents: Documents | None = None, cache: KVCache | None = None,
                recurrent: bool = False):
        check_no_documents_with_cache(documents, cache)
        B, T, _ = x_BTD.shape
        Hk, Hv, K, V = self.num_k_heads, self.num_v_heads, self.k_dim, self.v_dim
        q, k, v, z_BTHV, b_BTH, a_BTH = self.split_heads(x_BTD)
        qkv_BTC = torch.cat([q.reshape(B, T, -1), k.reshape(B, T, -1), v.reshape(B, T, -1)], dim=-1)
        conv_state = None if cache is None else cache.get_state(self.layer_idx, "conv")
        qkv_BTC, conv_state = self.conv1d(qkv_BTC, documents, conv_state)
        q_BTHK, k_BTHK, v_BTHV = qkv_BTC.split([Hk * K, Hk * K, Hv * V], dim=-1)
        q_BTHK = q_BTHK.reshape(B, T, Hk, K).repeat_interleave(Hv // Hk, dim=2)
        k_BTHK = k_BTHK.reshape(B, T, Hk, K).repeat_interleave(Hv // Hk, dim=2)
        v_BTHV = v_BTHV.reshape(B, T, Hv, V)
        beta_BTH = b_BTH.float().sigmoid()
        log_decay_BTH = -self.A_log.float().exp() * F.softplus(a_BTH.float() + self.dt_bias.float())
        state = None if cache is None else cache.get_state(self.layer_idx, "recurrent")
        chunked = not (recurrent or (cache is not None and T == 1))
        if chunked and kernels.runs(self.linear_kernels, "fla", v_BTHV) and not is_split(documents):
            y_BTHV, state = kernels.gated_delta_rule(q_BTHK, k_BTHK, v_BTHV, log_decay_BTH, beta_BTH, documents, state,
                                                     output_final_state=cache is not None)
        else:
            q_BTHK = l2_normalize(q_BTHK.float()) / math.sqrt(K)
            args = [t.transpose(1, 2) for t in (q_BTHK, l2_normalize(k_BTHK.float()), v_BTHV, log_decay_BTH, beta_BTH)]
            scan = functools.partial(chunked_delta_rule, chunk=self.chunk_size) if chunked else recurrent_delta_rule
            y_BHTV, state = scan_window(scan, documents, *args, state=state)
            y_BTHV = y_BHTV.transpose(1, 2)
        if cache is not None:
            cache.set_state(self.layer_idx, "conv", conv_state)
            cache.set_state(self.layer_idx, "recurrent", state)
        y_BTHV = self.norm(y_BTHV.to(x_BTD.dtype), z_BTHV)
        return self.out_proj(y_BTHV.reshape(B, T, Hv * V))

    def state_bytes(self, dtype: torch.dtype) -> int:
        return self.conv1d.state_bytes(dtype) + self.num_v_heads * self.k_dim * self.v_dim * dtype.itemsize

    def cache_bytes(self, context: int, dtype: torch.dtype) -> int:
        """Constant: conv state + delta-rule state, at any context."""
        return self.state_bytes(dtype)

    def mha_cache_bytes(self, context: int, dtype: torch.dtype) -> int:
        return self.num_v_heads * (self.k_dim + self.v_dim) * dtype.itemsize * context

    def score_flops_per_token(self, context: int) -> int:
        """Recurrent-form count, independent of the context: S^T k, the rank-1 update and S^T q,
        2 FLOPs per multiply-add, x3 for forward + backward."""
        return 18 * self.num_v_heads * self.k_dim * self.v_dim
