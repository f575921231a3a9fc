"""Multi-head latent attention (DeepSeek-V2, arXiv 2405.04434, sec. 2.1; DeepSeek-V3, arXiv
2412.19437, sec. 2.1.1), written against transformers' DeepseekV3Attention and DeepSeek's reference
inference/model.py.

Each token is compressed to a latent c = RMSNorm(W_kva x) of kv_lora_rank dims plus one rope key
k_rope = RoPE(W_kr x) of qk_rope_head_dim dims shared by all heads. Per head, keys are
[W_uk c ; k_rope] and values W_uv c (kv_b_proj holds W_uk and W_uv). Queries are W_q x, or with
q_lora_rank W_qb RMSNorm(W_qa x), split into a no-position and a rope part. The decode cache keeps
only c and k_rope: (kv_lora_rank + qk_rope_head_dim) numbers per token and layer, against
2 * heads * head_dim for MHA. Decoding decompresses the cached latents each step (the
"absorbed" variant that folds W_uk into the query is a speed-up with the same cache).

Softmax scale: (qk_nope + qk_rope)^-1/2, times mscale(s, mscale_all_dim)^2 under YaRN (the
reference's `softmax_scale *= mscale * mscale`); the rope part also carries YaRN's
mscale/mscale_all_dim factor through cos/sin, as in transformers.

`lora_scale` (LongCat-Flash, arXiv 2509.01322; transformers' LongcatFlashMLA): queries are multiplied by
sqrt(dim / q_lora_rank) and the normed latent by sqrt(dim / kv_lora_rank), to keep the low-rank
paths' scale independent of the ranks.
"""

import torch
from torch import nn

from train.model.attention import attend, check_backend
from train.model.config import MixerConfig, ModelConfig
from train.model.kv_cache import KVCache
from train.model.documents import Documents
from train.model.norm import RMSNorm
from train.model.position import ROTARY_KINDS
from train.model.position.rope import Rotary
from train.model.position.yarn import _mscale
from train.model.registry import register_mixer


@register_mixer("mla")
class MultiHeadLatentAttention(nn.Module):
    def __init__(self, config: MixerConfig, model: ModelConfig, layer_idx: int):
        super().__init__()
        c = config.mla
        if model.position.kind not in ROTARY_KINDS:
            raise ValueError(f"mla needs rotary positions (position.kind in {ROTARY_KINDS}), got {model.position.kind!r}")
        self.layer_idx = layer_idx
        check_backend(model.attention_backend)
        self.backend = model.attention_backend
        self.num_heads, self.q_lora_rank, self.kv_lora_rank = c.num_heads, c.q_lora_rank, c.kv_lora_rank
        self.nope_dim, self.rope_dim, self.v_head_dim = c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim
        H, D, qk_dim = c.num_heads, model.dim, c.qk_nope_head_dim + c.qk_rope_head_dim
        if c.q_lora_rank is None:
            self.q_proj = nn.Linear(D, H * qk_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(D, c.q_lora_rank, bias=c.bias)
            self.q_a_layernorm = RMSNorm(c.q_lora_rank, c.latent_norm_eps)
            self.q_b_proj = nn.Linear(c.q_lora_rank, H * qk_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(D, c.kv_lora_rank + c.qk_rope_head_dim, bias=c.bias)
        self.kv_a_layernorm = RMSNorm(c.kv_lora_rank, c.latent_norm_eps)
        self.kv_b_proj = nn.Linear(c.kv_lora_rank, H * (c.qk_nope_head_dim + c.v_head_dim), bias=False)
        self.o_proj = nn.Linear(H * c.v_head_dim, D, bias=c.bias)
        self.rotary = Rotary(model.position, c.qk_rope_head_dim)
        self.scale = qk_dim**-0.5
        self.q_lora_scale = (D / c.q_lora_rank) ** 0.5 if c.lora_scale and c.q_lora_rank else 1.0
        self.kv_lora_scale = (D / c.kv_lora_rank) ** 0.5 if c.lora_scale else 1.0
        yarn = model.position.yarn
        if model.position.kind == "yarn" and yarn.mscale_all_dim:
            self.scale *= _mscale(yarn.factor, yarn.mscale_all_dim) ** 2

    def forward(self, x_BTD, positions_BT, documents: Documents | None = None, cache: KVCache | None = None):
        B, T, _ = x_BTD.shape
        H, N, R = self.num_heads, self.nope_dim, self.rope_dim
        q_flat = self.q_proj(x_BTD) if self.q_lora_rank is None else self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x_BTD)))
        q_nope_BTHN, q_rope_BTHR = (q_flat * self.q_lora_scale).view(B, T, H, N + R).split([N, R], dim=-1)
        latent_BTC, k_rope_BTR = self.kv_a_proj_with_mqa(x_BTD).split([self.kv_lora_rank, R], dim=-1)
        latent_BTC = self.kv_a_layernorm(latent_BTC) * self.kv_lora_scale
        q_rope_BTHR = self.rotary(q_rope_BTHR, positions_BT)
        k_rope_BT1R = self.rotary(k_rope_BTR[:, :, None], positions_BT)
        start = 0
        latent_B1LC, k_rope_B1LR = latent_BTC[:, None], k_rope_BT1R.transpose(1, 2)
        if cache is not None:  # the cache holds only the latent and the shared rope key
            start = cache.length
            latent_B1LC, k_rope_B1LR = cache.update(self.layer_idx, latent_B1LC, k_rope_B1LR)
        L = latent_B1LC.shape[2]
        kv_BLHX = self.kv_b_proj(latent_B1LC[:, 0]).view(B, L, H, N + self.v_head_dim)
        k_nope_BLHN, v_BLHV = kv_BLHX.split([N, self.v_head_dim], dim=-1)
        k_BHLK = torch.cat([k_nope_BLHN.transpose(1, 2), k_rope_B1LR.expand(B, H, L, R)], dim=-1)
        q_BHTK = torch.cat([q_nope_BTHN, q_rope_BTHR], dim=-1).transpose(1, 2)
        v_BHLV = v_BLHV.transpose(1, 2)
        # values have v_head_dim dims, queries and keys nope + rope: SDPA and FlexAttention take both
        y_BHTV = attend(q_BHTK, k_BHLK, v_BHLV, self.backend, start, documents, scale=self.scale)
        return self.o_proj(y_BHTV.transpose(1, 2).reshape(B, T, H * self.v_head_dim))

    def cache_bytes(self, context: int, dtype: torch.dtype) -> int:
        """Latent + shared rope key per token: (kv_lora_rank + qk_rope_head_dim) * itemsize."""
        return (self.kv_lora_rank + self.rope_dim) * dtype.itemsize * context

    def state_bytes(self, dtype: torch.dtype) -> int:
        return 0

    def mha_cache_bytes(self, context: int, dtype: torch.dtype) -> int:
        """MHA with the same heads caches full keys (nope + rope) and values per head."""
        return self.num_heads * (self.nope_dim + self.rope_dim + self.v_head_dim) * dtype.itemsize * context

    def score_flops_per_token(self, context: int) -> int:
        """QK^T over nope+rope dims and AV over v dims, forward + backward (x3), no causal halving."""
        return 6 * self.num_heads * (self.nope_dim + self.rope_dim + self.v_head_dim) * context
