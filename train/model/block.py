"""Pre-norm transformer block (GPT-2 / Llama): x + mixer(norm(x)), then x + ffn(norm(x)).
A feed-forward of kind `none` drops the second sublayer (Mamba2 blocks are norm + mixer only).

ShortcutMoEBlock is LongCat-Flash's shortcut-connected MoE layer (ScMoE, arXiv 2509.01322 sec. 2.1;
transformers' LongcatFlashDecoderLayer): two pre-norm blocks (sublayers 2i and 2i+1, dense FFNs) and
an MoE that reads the normed FFN input of the first and is added to the output of the second, so
its dispatch can overlap the second block's compute."""

from torch import nn

from train.model.config import ModelConfig
from train.model.ffn import build_ffn
from train.model.mixer import build_mixer
from train.model.norm import build_norm


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        mixer_config, ffn_config = config.layer_mixer(layer_idx), config.layer_ffn(layer_idx)
        self.mixer_norm = build_norm(config.norm, config.dim)
        self.mixer = build_mixer(mixer_config, config, layer_idx)
        self.ffn_norm = self.ffn = None
        if ffn_config.kind != "none":
            self.ffn_norm = build_norm(config.norm, config.dim)
            self.ffn = build_ffn(ffn_config, config, layer_idx)

    def mix(self, x_BTD, positions_BT, documents=None, cache=None):
        return x_BTD + self.mixer(self.mixer_norm(x_BTD), positions_BT, documents, cache)

    def forward(self, x_BTD, positions_BT, documents=None, cache=None):
        x_BTD = self.mix(x_BTD, positions_BT, documents, cache)
        return x_BTD if self.ffn is None else x_BTD + self.ffn(self.ffn_norm(x_BTD))


class ShortcutMoEBlock(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        moe_config = config.ffns[config.shortcut_moe]
        self.blocks = nn.ModuleList(Block(config, 2 * layer_idx + i) for i in range(2))
        self.moe = build_ffn(moe_config, config, layer_idx)

    def forward(self, x_BTD, positions_BT, documents=None, cache=None):
        first, second = self.blocks
        x_BTD = first.mix(x_BTD, positions_BT, documents, cache)
        normed_BTD = first.ffn_norm(x_BTD)
        shortcut_BTD = self.moe(normed_BTD)
        x_BTD = second(x_BTD + first.ffn(normed_BTD), positions_BT, documents, cache)
        return x_BTD + shortcut_BTD
