"""Softmax attention (Vaswani et al. 2017) with G key/value heads shared by groups of query heads:
G = H is multi-head (MHA), G = 1 multi-query (MQA, Shazeer 2019), 1 < G < H grouped-query
(GQA, Ainslie et al. 2023). Options: QK-norm per head (Qwen3, Gemma 3) or over the whole projection
(OLMo 2), a softmax scale other than head_dim^-1/2 and logit soft-capping (Gemma 2/3), this mixer's own
rotary base (Gemma 3's local layers), projection biases (GPT-2, Qwen2), a
sliding window (Mistral, Gemma), learned attention sinks (GPT-OSS), an output gate (Qwen3-Next:
attn * sigmoid(W_g x), per head), document masking for packed sequences, value residuals (ResFormer,
`model.residual.value_residual`: forward then takes and returns the first attention layer's values). The kernel is `model.attention_backend`'s (train/model/attention.py): SDPA, causal or with a
dense mask, or FlexAttention with the forward's shared BlockMask.
"""

import torch
from torch import nn

from train.model.attention import attend, check_backend
from train.model.config import QK_NORM_OVER, MixerConfig, ModelConfig
from train.model.documents import Documents
from train.model.kv_cache import KVCache
from train.model.norm import build_norm
from train.model.position import ROTARY_KINDS
from train.model.position.rope import Rotary
from train.model.registry import register_mixer
from train.model.residual.value_residual import ValueResidual


@register_mixer("softmax_attention")
class SoftmaxAttention(nn.Module):
    def __init__(self, config: MixerConfig, model: ModelConfig, layer_idx: int):
        super().__init__()
        attn = config.attention
        self.layer_idx = layer_idx
        self.num_heads = attn.num_heads
        self.num_kv_heads = attn.num_kv_heads or attn.num_heads
        self.head_dim = attn.head_dim or model.dim // attn.num_heads
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"attention.num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
        self.window = attn.window
        check_backend(model.attention_backend)
        self.backend = model.attention_backend
        H, G, K, D = self.num_heads, self.num_kv_heads, self.head_dim, model.dim
        self.output_gate = attn.output_gate
        # with an output gate q_proj emits [q_h, gate_h] per head (the Qwen3-Next layout)
        self.q_proj = nn.Linear(D, H * K * (2 if attn.output_gate else 1), bias=attn.qkv_bias)
        self.k_proj = nn.Linear(D, G * K, bias=attn.qkv_bias)
        self.v_proj = nn.Linear(D, G * K, bias=attn.qkv_bias)
        self.o_proj = nn.Linear(H * K, D, bias=attn.out_bias)
        # QK-norm bounds the logits (before rope): Qwen3 normalises each head over head_dim, OLMo 2 the
        # whole q and k projections (over H*K and G*K)
        if attn.qk_norm_over not in QK_NORM_OVER:
            raise ValueError(f"attention.qk_norm_over={attn.qk_norm_over!r} is not one of {QK_NORM_OVER}")
        self.qk_norm_over = attn.qk_norm_over
        whole = attn.qk_norm_over == "all"
        self.q_norm = build_norm(model.norm, H * K if whole else K) if attn.qk_norm else None
        self.k_norm = build_norm(model.norm, G * K if whole else K) if attn.qk_norm else None
        position = attn.position or model.position
        if attn.position is not None and position.kind not in ROTARY_KINDS + ("none",):
            raise ValueError(f"attention.position.kind={position.kind!r}: a mixer's own positions are rotary "
                             f"({ROTARY_KINDS}) or none; absolute positions belong in model.position")
        self.rotary = Rotary(position, K) if position.kind in ROTARY_KINDS else None
        self.sinks = nn.Parameter(torch.zeros(H)) if attn.sinks else None
        for key in ("scale_dim", "softcap"):
            if getattr(attn, key) is not None and getattr(attn, key) <= 0:
                raise ValueError(f"attention.{key}={getattr(attn, key)} must be positive (or null for none)")
        self.scale = None if attn.scale_dim is None else attn.scale_dim**-0.5
        self.logit_cap = attn.softcap
        self.carries_values = model.residual.value_residual
        self.value_residual = None
        if self.carries_values:  # every softmax attention layer but the first mixes the first one's values in
            first = next(i for i in range(model.num_layers) if model.layer_mixer(i).kind == "softmax_attention")
            self.value_residual = ValueResidual() if layer_idx != first else None

    def forward(self, x_BTD, positions_BT, documents: Documents | None = None, cache: KVCache | None = None,
                values_BTGK=None):
        B, T, _ = x_BTD.shape
        if self.output_gate:
            q_BTHK, gate_BTHK = self.q_proj(x_BTD).view(B, T, self.num_heads, 2 * self.head_dim).chunk(2, dim=-1)
        else:
            q_BTHK = self.q_proj(x_BTD).view(B, T, self.num_heads, self.head_dim)
        k_BTGK = self.k_proj(x_BTD).view(B, T, self.num_kv_heads, self.head_dim)
        v_BTGK = self.v_proj(x_BTD).view(B, T, self.num_kv_heads, self.head_dim)
        if self.carries_values:  # the first attention layer passes its values on; the later ones mix them in
            v_BTGK, values_BTGK = (v_BTGK, v_BTGK) if self.value_residual is None else (
                self.value_residual(v_BTGK, values_BTGK), values_BTGK)
        if self.q_norm is not None and self.qk_norm_over == "all":
            q_BTHK = self.q_norm(q_BTHK.flatten(-2)).view_as(q_BTHK)
            k_BTGK = self.k_norm(k_BTGK.flatten(-2)).view_as(k_BTGK)
        elif self.q_norm is not None:
            q_BTHK, k_BTGK = self.q_norm(q_BTHK), self.k_norm(k_BTGK)
        if self.rotary is not None:
            q_BTHK, k_BTGK = self.rotary(q_BTHK, positions_BT), self.rotary(k_BTGK, positions_BT)
        q_BHTK, k_BGLK, v_BGLK = q_BTHK.transpose(1, 2), k_BTGK.transpose(1, 2), v_BTGK.transpose(1, 2)
        start = 0
        if cache is not None:
            start = cache.length
            k_BGLK, v_BGLK = cache.update(self.layer_idx, k_BGLK, v_BGLK)
        y_BHTK = attend(q_BHTK, k_BGLK, v_BGLK, self.backend, start, documents, self.window, self.sinks, self.scale,
                        self.logit_cap)
        y_BTHK = y_BHTK.transpose(1, 2)
        if self.output_gate:
            y_BTHK = y_BTHK * torch.sigmoid(gate_BTHK)
        out_BTD = self.o_proj(y_BTHK.reshape(B, T, self.num_heads * self.head_dim))
        return (out_BTD, values_BTGK) if self.carries_values else out_BTD

    def cache_bytes(self, context: int, dtype: torch.dtype) -> int:
        """Bytes of keys+values one sequence of `context` tokens keeps in this layer."""
        cached_tokens = context if self.window is None else min(context, self.window)
        return 2 * self.num_kv_heads * self.head_dim * dtype.itemsize * cached_tokens

    def state_bytes(self, dtype: torch.dtype) -> int:
        """Fixed-size part of the cache (none: everything grows with the context)."""
        return 0

    def mha_cache_bytes(self, context: int, dtype: torch.dtype) -> int:
        """The cache of a full-context MHA layer with these query heads and head dims (for comparison)."""
        return 2 * self.num_heads * self.head_dim * dtype.itemsize * context

    def score_flops_per_token(self, context: int) -> int:
        """Training FLOPs per token of QK^T and AV at this context, PaLM convention (no causal
        halving): forward 2*2*H*K*T, times 3 for forward+backward."""
        attended = context if self.window is None else min(context, self.window)
        return 12 * self.num_heads * self.head_dim * attended
