"""Layer-wise scaling of the residual branches: what multiplies a sublayer's output before it joins the
residual stream (`model.residual.branch_scale`).

    layerscale  y * gamma, gamma [D] learned per channel, initialised to `layerscale_init`
                (CaiT: Touvron et al. 2021, "Going deeper with Image Transformers", arXiv 2103.17239 sec. 2.1)
    depth       y / sqrt(2 * num_layers), a constant, so the sum of the branches keeps its scale as the
                depth grows (depth-muP: Yang et al. 2023, "Tensor Programs VI", arXiv 2310.02244; Bordelon
                et al. 2023, arXiv 2309.16620 use 1 / sqrt(L))
"""

import torch
from torch import nn


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.init = init
        self.gamma = nn.Parameter(torch.full((dim,), init))

    @torch.no_grad()
    def reset_extra_parameters(self) -> None:
        self.gamma.fill_(self.init)

    def forward(self, y_BTD: torch.Tensor) -> torch.Tensor:
        return y_BTD * self.gamma.to(y_BTD.dtype)


class DepthScale(nn.Module):
    def __init__(self, num_branches: int):
        super().__init__()
        self.factor = num_branches**-0.5

    def forward(self, y_BTD: torch.Tensor) -> torch.Tensor:
        return y_BTD * self.factor
