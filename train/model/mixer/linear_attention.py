"""Causal linear attention (Katharopoulos et al. 2020, "Transformers are RNNs", arXiv 2006.16236):
softmax(q k^T) is replaced by phi(q) phi(k)^T with phi(x) = elu(x) + 1 (their eq. 7), so

    y_t = phi(q_t)^T S_t / (phi(q_t)^T z_t + eps),   S_t = S_{t-1} + phi(k_t) v_t^T,   z_t = z_{t-1} + phi(k_t)

(eq. 16-20). The normaliser z rides along as an extra all-ones value column, so one scan
(linear_scan.py, chunked for training, recurrent for decoding) computes numerator and denominator.
The decode state is S and z: heads * head_dim * (head_dim + 1) numbers, whatever the context.
Documents reset the state at their first token; a split sequence (context parallelism) is scanned whole,
a share of the heads on each device (linear_scan.scan_window).
"""

import functools

import torch
import torch.nn.functional as F
from torch import nn

from train.model.config import MixerConfig, ModelConfig
from train.model.documents import Documents, check_no_documents_with_cache
from train.model.kv_cache import KVCache
from train.model.mixer.linear_scan import chunked_linear_attention, recurrent_linear_attention, scan_window
from train.model.registry import register_mixer


@register_mixer("linear_attention")
class LinearAttention(nn.Module):
    def __init__(self, config: MixerConfig, model: ModelConfig, layer_idx: int):
        super().__init__()
        c = config.linear_attention
        self.layer_idx, self.eps, self.chunk_size = layer_idx, c.eps, c.chunk_size
        self.num_heads, self.head_dim = c.num_heads, c.head_dim or model.dim // c.num_heads
        H, K, D = self.num_heads, self.head_dim, model.dim
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(D, H * K, bias=False) for _ in range(3))
        self.o_proj = nn.Linear(H * K, D, bias=False)

    def forward(self, x_BTD, positions_BT, documents: Documents | None = None, cache: KVCache | None = None,
                recurrent: bool = False):
        check_no_documents_with_cache(documents, cache)
        B, T, _ = x_BTD.shape
        H, K = self.num_heads, self.head_dim
        q_BHTK, k_BHTK, v_BHTK = (p(x_BTD).view(B, T, H, K).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        q_BHTK, k_BHTK = F.elu(q_BHTK.float()) + 1, F.elu(k_BHTK.float()) + 1
        v1_BHTV = torch.cat([v_BHTK.float(), v_BHTK.new_ones(B, H, T, 1, dtype=torch.float32)], dim=-1)
        state = None if cache is None else cache.get_state(self.layer_idx, "recurrent")
        if recurrent or (cache is not None and T == 1):
            scan = recurrent_linear_attention
        else:
            scan = functools.partial(chunked_linear_attention, chunk=self.chunk_size)
        y_BHTV, state = scan_window(scan, documents, q_BHTK, k_BHTK, v1_BHTV, None, state=state)
        if cache is not None:
            cache.set_state(self.layer_idx, "recurrent", state)
        y_BHTK = y_BHTV[..., :K] / (y_BHTV[..., K:] + self.eps)
        return self.o_proj(y_BHTK.transpose(1, 2).reshape(B, T, H * K).type_as(x_BTD))

    def state_bytes(self, dtype: torch.dtype) -> int:
        return self.num_heads * self.head_dim * (self.head_dim + 1) * dtype.itemsize

    def cache_bytes(self, context: int, dtype: torch.dtype) -> int:
        """Constant: the state S and normaliser z, at any context."""
        return self.state_bytes(dtype)

    def mha_cache_bytes(self, context: int, dtype: torch.dtype) -> int:
        return 2 * self.num_heads * self.head_dim * dtype.itemsize * context

    def score_flops_per_token(self, context: int) -> int:
        """Recurrent-form count, independent of the context: k v^T and q^T S, 2 FLOPs per
        multiply-add, x3 for forward + backward (the chunked form adds ~12*H*chunk*(K+V) intra-chunk)."""
        return 12 * self.num_heads * self.head_dim * (self.head_dim + 1)
