"""The parallel block (GPT-J, Wang & Komatsuzaki 2021; PaLM, Chowdhery et al. 2022, arXiv 2204.02311 sec. 2):
the mixer and the feed-forward read the same input and their outputs join the residual together,

    x + mixer(norm(x)) + ffn(norm(x))         one shared norm (GPT-J, PaLM: `residual.parallel_shared_norm`)
    x + mixer(norm1(x)) + ffn(norm2(x))       a norm each (GPT-NeoX's use_parallel_residual)

so the two input projections can run as one matmul (PaLM reports ~15% faster training at large scale).
The norm placements, branch scales and hyper-connections of Block apply to the pair (one connection per block).
"""

from train.model.block import Block
from train.model.config import ModelConfig


class ParallelBlock(Block):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        if self.ffn is None:
            raise ValueError(f"model.residual.arrangement=parallel needs a feed-forward in every layer; layer {layer_idx} "
                             "has kind none")
        if config.residual.parallel_shared_norm:
            self.ffn_norm = None  # the mixer's pre norm feeds both
        if self.placement == "post":
            self.ffn_post_norm = None  # one norm after the sum: mixer_post_norm
        self.ffn_connection = None  # one connection reads and writes the pair

    def forward(self, x, positions_BT, documents=None, cache=None, values=None):
        def branch(h):
            nonlocal values
            normed = h if self.mixer_norm is None else self.mixer_norm(h)
            y_BTD, values = self._mixer(normed, positions_BT, documents, cache, values)
            ffn_BTD = self.ffn(normed if self.ffn_norm is None else self.ffn_norm(h))
            return (self._output(y_BTD, self.mixer_post_norm, self.mixer_scale)
                    + self._output(ffn_BTD, self.ffn_post_norm, self.ffn_scale))

        x = self._residual(x, branch, self.mixer_connection, self.mixer_post_norm)
        return (x, values) if self.value_residual else x
