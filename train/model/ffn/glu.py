"""Gated linear unit feed-forwards (Shazeer 2020, "GLU Variants Improve Transformer",
arXiv 2002.05202): down(act(gate(x)) * up(x)). The activation names the variant:
sigmoid = GLU, relu = ReGLU, gelu = GEGLU, silu = SwiGLU (Llama, Qwen)."""

from torch import nn

from train.model.config import FFNConfig, ModelConfig
from train.model.ffn.activation import get_activation
from train.model.registry import register_ffn


@register_ffn("glu")
class GLU(nn.Module):
    def __init__(self, config: FFNConfig, model: ModelConfig, layer_idx: int):
        super().__init__()
        self.activation = get_activation(config.activation)
        self.gate_proj = nn.Linear(model.dim, config.hidden_dim, bias=config.bias)
        self.up_proj = nn.Linear(model.dim, config.hidden_dim, bias=config.bias)
        self.down_proj = nn.Linear(config.hidden_dim, model.dim, bias=config.bias)

    def forward(self, x_BTD):
        return self.down_proj(self.activation(self.gate_proj(x_BTD)) * self.up_proj(x_BTD))
