"""Classic transformer MLP: down(act(up(x))) (Vaswani et al. 2017; GELU in GPT-2)."""

from torch import nn

from train.model.config import FFNConfig, ModelConfig
from train.model.ffn.activation import get_activation
from train.model.registry import register_ffn


@register_ffn("mlp")
class MLP(nn.Module):
    def __init__(self, config: FFNConfig, model: ModelConfig, layer_idx: int):
        super().__init__()
        self.activation = get_activation(config.activation)
        self.up_proj = nn.Linear(model.dim, config.hidden_dim, bias=config.bias)
        self.down_proj = nn.Linear(config.hidden_dim, model.dim, bias=config.bias)

    def forward(self, x_BTD):
        return self.down_proj(self.activation(self.up_proj(x_BTD)))
