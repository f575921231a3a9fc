"""Parallel hybrid mixer (Falcon-H1, arXiv 2507.22448, sec. 2): attention heads and Mamba2 heads
read the same normed input side by side and their outputs are summed,
    out = attention_multiplier * attention(x) + ssm_multiplier * mamba2(x).
Composes the registered `softmax_attention` and `mamba2` mixers; the cache holds the attention's
keys/values and the SSM's fixed-size state under the same layer index.
"""

import torch
from torch import nn

from train.model.config import MixerConfig, ModelConfig
from train.model.documents import Documents
from train.model.kv_cache import KVCache
from train.model.registry import MIXERS, lookup, register_mixer


@register_mixer("parallel_hybrid")
class ParallelHybrid(nn.Module):
    def __init__(self, config: MixerConfig, model: ModelConfig, layer_idx: int):
        super().__init__()
        c = config.parallel_hybrid
        self.attention_multiplier, self.ssm_multiplier = c.attention_multiplier, c.ssm_multiplier
        attention_config = MixerConfig(kind="softmax_attention", attention=c.attention)
        ssm_config = MixerConfig(kind="mamba2", mamba2=c.mamba2)
        self.attention = lookup(MIXERS, "mixer", "softmax_attention")(attention_config, model, layer_idx)
        self.ssm = lookup(MIXERS, "mixer", "mamba2")(ssm_config, model, layer_idx)

    def forward(self, x_BTD, positions_BT, documents: Documents | None = None, cache: KVCache | None = None):
        attention_BTD = self.attention(x_BTD, positions_BT, documents, cache)
        ssm_BTD = self.ssm(x_BTD, positions_BT, documents, cache)
        return self.attention_multiplier * attention_BTD + self.ssm_multiplier * ssm_BTD

    def _both(self, method: str, *args) -> int:
        return getattr(self.attention, method)(*args) + getattr(self.ssm, method)(*args)

    def cache_bytes(self, context: int, dtype: torch.dtype) -> int:
        return self._both("cache_bytes", context, dtype)

    def state_bytes(self, dtype: torch.dtype) -> int:
        return self._both("state_bytes", dtype)

    def mha_cache_bytes(self, context: int, dtype: torch.dtype) -> int:
        return self._both("mha_cache_bytes", context, dtype)

    def score_flops_per_token(self, context: int) -> int:
        return self._both("score_flops_per_token", context)
