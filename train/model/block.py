"""Transformer block: a mixer sublayer, then a feed-forward sublayer, each added to the residual with
its norms placed by `model.norm_placement` (f is the mixer or the feed-forward):
    pre            x + f(norm(x))                  GPT-2, Llama (Xiong et al. 2020, arXiv 2002.04745)
    sandwich       x + post_norm(f(norm(x)))       Gemma 2/3 (arXiv 2408.00118 sec. 2, 2503.19786)
    post_sublayer  x + post_norm(f(x))             OLMo 2 (arXiv 2501.00656 sec. 3.3.1)
The pre norms are `mixer_norm` / `ffn_norm`, the post norms `mixer_post_norm` / `ffn_post_norm`.
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
        pre, post = config.norm_placement != "post_sublayer", config.norm_placement != "pre"
        has_ffn = ffn_config.kind != "none"

        def norm(wanted: bool):
            return build_norm(config.norm, config.dim) if wanted else None

        self.mixer_norm, self.mixer_post_norm = norm(pre), norm(post)
        self.mixer = build_mixer(mixer_config, config, layer_idx)
        self.ffn_norm, self.ffn_post_norm = norm(pre and has_ffn), norm(post and has_ffn)
        self.ffn = build_ffn(ffn_config, config, layer_idx) if has_ffn else None

    @staticmethod
    def _sublayer(x_BTD, f, pre_norm, post_norm):
        y_BTD = f(x_BTD if pre_norm is None else pre_norm(x_BTD))
        return x_BTD + (y_BTD if post_norm is None else post_norm(y_BTD))

    def mix(self, x_BTD, positions_BT, documents=None, cache=None):
        mixer = lambda h_BTD: self.mixer(h_BTD, positions_BT, documents, cache)  # noqa: E731
        return self._sublayer(x_BTD, mixer, self.mixer_norm, self.mixer_post_norm)

    def forward(self, x_BTD, positions_BT, documents=None, cache=None):
        x_BTD = self.mix(x_BTD, positions_BT, documents, cache)
        return x_BTD if self.ffn is None else self._sublayer(x_BTD, self.ffn, self.ffn_norm, self.ffn_post_norm)


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
