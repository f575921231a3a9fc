"""Hyper-connections (Zhu et al. 2024, "Hyper-Connections", arXiv 2409.19606): the residual stream becomes
n streams H [n, D] per token, and each sublayer T (its norms included) reads and writes them through a
learned (n+1) x (n+1) connection matrix  HC = [[0, B], [A_m, A_r]]  (eq. 1-5):

    h   = A_m^T H                 the sublayer's input: a weighted sum of the streams   A_m [n, 1]
    H'  = B^T T(h) + A_r^T H      its output added to each stream, the streams mixed    B [1, n], A_r [n, n]

Static (SHC): A_m, A_r, B are parameters, initialised so the network starts as a plain residual one:
A_m = e_{k mod n} for sublayer k, A_r = I, B = ones (sec. 3.3). Dynamic (DHC, eq. 10-13): each is
offset by a function of the token's own normed streams, s_alpha * tanh(norm(H) W) for A_m and A_r and
s_beta * tanh(norm(H) W_beta) for B, with W initialised to zero and the scales s to 0.01. The layout follows
the paper's pseudo-code (its appendix): `static_alpha` [n, n+1] holds A_m as its first column and A_r after it.
The model copies the embedding into the n streams and sums them before the final norm.
"""

import torch
from torch import nn

from train.model.config import NormConfig
from train.model.norm import build_norm


class HyperConnection(nn.Module):
    def __init__(self, streams: int, dim: int, sublayer: int, dynamic: bool, norm: NormConfig):
        super().__init__()
        self.streams, self.sublayer = streams, sublayer
        self.static_alpha = nn.Parameter(torch.empty(streams, streams + 1))  # [A_m | A_r]
        self.static_beta = nn.Parameter(torch.empty(streams))  # B
        self.norm = build_norm(norm, dim) if dynamic else None
        if dynamic:
            self.dynamic_alpha_fn = nn.Parameter(torch.empty(dim, streams + 1))
            self.dynamic_alpha_scale = nn.Parameter(torch.empty(1))
            self.dynamic_beta_fn = nn.Parameter(torch.empty(dim))
            self.dynamic_beta_scale = nn.Parameter(torch.empty(1))
        self.reset_extra_parameters()

    @torch.no_grad()
    def reset_extra_parameters(self) -> None:
        """A plain residual at init: A_m = e_{k mod n}, A_r = I, B = ones; the dynamic parts zero, scales 0.01."""
        n = self.streams
        self.static_alpha.zero_()
        self.static_alpha[self.sublayer % n, 0] = 1.0
        self.static_alpha[:, 1:] = torch.eye(n)
        self.static_beta.fill_(1.0)
        if self.norm is not None:
            self.dynamic_alpha_fn.zero_()
            self.dynamic_beta_fn.zero_()
            self.dynamic_alpha_scale.fill_(0.01)
            self.dynamic_beta_scale.fill_(0.01)

    def forward(self, H_BTnD: torch.Tensor, sublayer) -> torch.Tensor:
        """The streams after `sublayer` (a function [B, T, D] -> [B, T, D]) has read and written them."""
        alpha_nm, beta_n = self.static_alpha, self.static_beta  # m = n + 1 columns: A_m, then A_r
        if self.norm is not None:
            normed_BTnD = self.norm(H_BTnD)
            alpha_nm = alpha_nm + self.dynamic_alpha_scale * torch.tanh(normed_BTnD @ self.dynamic_alpha_fn)
            beta_n = beta_n + self.dynamic_beta_scale * torch.tanh(normed_BTnD @ self.dynamic_beta_fn)
        mixed_BTmD = alpha_nm.to(H_BTnD.dtype).transpose(-1, -2) @ H_BTnD  # row 0: A_m^T H; rows 1..n: A_r^T H
        y_BTD = sublayer(mixed_BTmD[..., 0, :])
        return beta_n.to(y_BTD.dtype)[..., :, None] * y_BTD[..., None, :] + mixed_BTmD[..., 1:, :]
