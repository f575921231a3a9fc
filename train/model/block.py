"""Transformer block: a mixer sublayer, then a feed-forward sublayer, each added to the residual with
its norms placed by the layer's norm placement (`model.norm_placement`, or per layer
`model.layer_norm_placements`; f is the mixer or the feed-forward):
    pre            x + f(norm(x))                  GPT-2, Llama (Xiong et al. 2020, arXiv 2002.04745)
    sandwich       x + post_norm(f(norm(x)))       Gemma 2/3 (arXiv 2408.00118 sec. 2, 2503.19786); Peri-LN (2502.02732)
    post_sublayer  x + post_norm(f(x))             OLMo 2 (arXiv 2501.00656 sec. 3.3.1)
    post           post_norm(x + f(x))             the original Transformer (Vaswani et al. 2017)
The pre norms are `mixer_norm` / `ffn_norm`, the post norms `mixer_post_norm` / `ffn_post_norm`.
A feed-forward of kind `none` drops the second sublayer (Mamba2 blocks are norm + mixer only).
`model.residual` (train/model/residual/) may scale each branch (`mixer_scale`, `ffn_scale`), replace the
addition by a hyper-connection over several streams (`mixer_connection`, `ffn_connection`), carry the
first attention layer's values down the stack (value residual), or run both sublayers side by side
(ParallelBlock, residual/parallel_block.py).

ShortcutMoEBlock is LongCat-Flash's shortcut-connected MoE layer (ScMoE, arXiv 2509.01322 sec. 2.1;
transformers' LongcatFlashDecoderLayer): two pre-norm blocks (sublayers 2i and 2i+1, dense FFNs) and
an MoE that reads the normed FFN input of the first and is added to the output of the second, so
its dispatch can overlap the second block's compute."""

from torch import nn

from train.model.config import ModelConfig
from train.model.ffn import build_ffn
from train.model.mixer import build_mixer
from train.model.norm import build_norm
from train.model.residual import build_branch_scale, build_connection


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        mixer_config, ffn_config = config.layer_mixer(layer_idx), config.layer_ffn(layer_idx)
        self.placement = config.layer_norm_placement(layer_idx)
        pre, post = self.placement in ("pre", "sandwich"), self.placement != "pre"
        has_ffn = ffn_config.kind != "none"

        def norm(wanted: bool):
            return build_norm(config.norm, config.dim) if wanted else None

        self.mixer_norm, self.mixer_post_norm = norm(pre), norm(post)
        self.mixer = build_mixer(mixer_config, config, layer_idx)
        self.ffn_norm, self.ffn_post_norm = norm(pre and has_ffn), norm(post and has_ffn)
        self.ffn = build_ffn(ffn_config, config, layer_idx) if has_ffn else None
        self.mixer_scale = build_branch_scale(config)
        self.ffn_scale = build_branch_scale(config) if has_ffn else None
        self.mixer_connection = build_connection(config, 2 * layer_idx)
        self.ffn_connection = build_connection(config, 2 * layer_idx + 1) if has_ffn else None
        self.value_residual = config.residual.value_residual  # forward takes and returns the first layer's values
        self.mixer_takes_values = getattr(self.mixer, "carries_values", False)

    def _output(self, y_BTD, post_norm, scale):
        """What a sublayer adds to the residual: its output, post-normed (unless the norm follows the sum), scaled."""
        if post_norm is not None and self.placement != "post":
            y_BTD = post_norm(y_BTD)
        return y_BTD if scale is None else scale(y_BTD)

    def _residual(self, x, branch, connection, post_norm):
        """x + branch(x), normed after the sum for `post`; a hyper-connection over the streams instead."""
        if connection is not None:
            return connection(x, branch)
        x = x + branch(x)
        return post_norm(x) if self.placement == "post" else x

    def _mixer(self, h_BTD, positions_BT, documents, cache, values):
        """(the mixer's output, the first attention layer's values)"""
        if self.mixer_takes_values:
            return self.mixer(h_BTD, positions_BT, documents, cache, values)
        return self.mixer(h_BTD, positions_BT, documents, cache), values

    def mix(self, x, positions_BT, documents=None, cache=None, values=None):
        """The mixer sublayer: (x after it, the first attention layer's values)."""
        def branch(h):
            nonlocal values
            y_BTD, values = self._mixer(h if self.mixer_norm is None else self.mixer_norm(h), positions_BT, documents,
                                        cache, values)
            return self._output(y_BTD, self.mixer_post_norm, self.mixer_scale)

        return self._residual(x, branch, self.mixer_connection, self.mixer_post_norm), values

    def forward(self, x, positions_BT, documents=None, cache=None, values=None):
        """x [B, T, D] (or the streams [B, T, n, D]) after both sublayers; with a value residual the pair
        (x, the first attention layer's values), which the next block takes as `values`."""
        x, values = self.mix(x, positions_BT, documents, cache, values)
        if self.ffn is not None:
            def branch(h):
                return self._output(self.ffn(h if self.ffn_norm is None else self.ffn_norm(h)), self.ffn_post_norm,
                                    self.ffn_scale)

            x = self._residual(x, branch, self.ffn_connection, self.ffn_post_norm)
        return (x, values) if self.value_residual else x


class ShortcutMoEBlock(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        moe_config = config.ffns[config.shortcut_moe]
        self.blocks = nn.ModuleList(Block(config, 2 * layer_idx + i) for i in range(2))
        self.moe = build_ffn(moe_config, config, layer_idx)

    def forward(self, x_BTD, positions_BT, documents=None, cache=None):
        first, second = self.blocks
        x_BTD, _ = first.mix(x_BTD, positions_BT, documents, cache)
        normed_BTD = first.ffn_norm(x_BTD)
        shortcut_BTD = self.moe(normed_BTD)
        x_BTD = second(x_BTD + first.ffn(normed_BTD), positions_BT, documents, cache)
        return x_BTD + shortcut_BTD
