"""Pre-norm transformer block (GPT-2 / Llama): x + mixer(norm(x)), then x + ffn(norm(x)).
A feed-forward of kind `none` drops the second sublayer (Mamba2 blocks are norm + mixer only)."""

from torch import nn

from train.model import ffn as _ffn  # noqa: F401  registers the feed-forward kinds
from train.model import mixer as _mixer  # noqa: F401  registers the mixer kinds
from train.model.config import ModelConfig
from train.model.norm import build_norm
from train.model.registry import FFNS, MIXERS, lookup


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        mixer_config, ffn_config = config.layer_mixer(layer_idx), config.layer_ffn(layer_idx)
        self.mixer_norm = build_norm(config.norm, config.dim)
        self.mixer = lookup(MIXERS, "mixer", mixer_config.kind)(mixer_config, config, layer_idx)
        self.ffn_norm = self.ffn = None
        if ffn_config.kind != "none":
            self.ffn_norm = build_norm(config.norm, config.dim)
            self.ffn = lookup(FFNS, "ffn", ffn_config.kind)(ffn_config, config, layer_idx)

    def forward(self, x_BTD, positions_BT, doc_ids_BT=None, cache=None):
        x_BTD = x_BTD + self.mixer(self.mixer_norm(x_BTD), positions_BT, doc_ids_BT, cache)
        return x_BTD if self.ffn is None else x_BTD + self.ffn(self.ffn_norm(x_BTD))
