"""Value residual learning (ResFormer: Zhou et al. 2024, "Value Residual Learning For Alleviating Attention
Concentration In Transformers", arXiv 2410.17897): every softmax attention layer after the first attends
with values mixed with the first attention layer's values,

    V'_n = lambda_1 V_n + lambda_2 V_1

(the paper's eq. 5; lambda_1 = lambda_2 = 0.5 at init, learned per layer as in its learnable variant).
The first layer's values V_1 [B, T, G, K] travel down the stack beside the residual stream
(Transformer.hidden_states); the mixed values are what the KV cache keeps, so decoding needs no V_1 of
past tokens. Every attention layer needs the first one's value shape (G kv heads x K dims).
"""

import torch
from torch import nn


class ValueResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.lambdas = nn.Parameter(torch.empty(2))
        self.reset_extra_parameters()

    @torch.no_grad()
    def reset_extra_parameters(self) -> None:
        self.lambdas.fill_(0.5)

    def forward(self, v_BTGK: torch.Tensor, first_BTGK: torch.Tensor) -> torch.Tensor:
        """The values to attend with."""
        if first_BTGK.shape != v_BTGK.shape:
            raise ValueError(f"model.residual.value_residual: values of shape {tuple(v_BTGK.shape)} cannot mix with the "
                             f"first attention layer's {tuple(first_BTGK.shape)}; give every attention layer the same "
                             "num_kv_heads and head_dim")
        lambdas = self.lambdas.to(v_BTGK.dtype)
        return lambdas[0] * v_BTGK + lambdas[1] * first_BTGK
