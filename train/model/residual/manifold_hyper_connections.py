"""Manifold-constrained hyper-connections (mHC: Xie et al. 2025, DeepSeek-AI, arXiv 2512.24880), as
DeepSeek-V4 runs them (transformers' DeepseekV4HyperConnection / DeepseekV4HyperHead). Like
hyper-connections (hyper_connections.py) the residual is n streams H [n, D] per token, read by a weight
vector `pre`, written by `post` and mixed by an n x n matrix `comb`:

    H' = post^T T(pre H) + comb^T H

but all three come from the token's whole flattened streams, x = rms_norm(vec(H)) [n D] (no weight), through
one projection `fn` [(2 + n) n, n D] with a bias `base` and a scale per output (`scale` [3]):

    pre  = sigmoid(scale_0 x fn_pre + base_pre) + eps          non-negative: no signal cancels
    post = 2 sigmoid(scale_1 x fn_post + base_post)
    comb = Sinkhorn-Knopp(softmax(scale_2 x fn_comb + base_comb) + eps)

and comb is projected onto the doubly stochastic matrices (the Birkhoff polytope: rows and columns sum to
1) by `sinkhorn_iters` alternating normalisations, so the stream mixing neither grows nor shrinks the
signal however many layers compose it (the paper's sec. 4.1). The model copies the embedding into the
streams and collapses them before the final norm with ManifoldHyperHead, a learned `pre` of its own.
Initialised as transformers' DeepseekV4PreTrainedModel: fn ~ Normal(0, init_std), base 0, scale 1.
"""

import torch
import torch.nn.functional as F
from torch import nn

from train.model.precision import fp32_matmuls


def unweighted_rms_norm(H_BTnD: torch.Tensor, eps: float) -> torch.Tensor:
    """rms_norm of each token's flattened streams [B, T, n D], in fp32."""
    flat = H_BTnD.flatten(-2).float()
    return F.rms_norm(flat, (flat.shape[-1],), eps=eps)


def sinkhorn(comb_BTnn: torch.Tensor, iters: int, eps: float) -> torch.Tensor:
    """Columns, then (iters - 1) times rows and columns, normalised to sum to 1."""
    comb_BTnn = comb_BTnn / (comb_BTnn.sum(dim=-2, keepdim=True) + eps)
    for _ in range(iters - 1):
        comb_BTnn = comb_BTnn / (comb_BTnn.sum(dim=-1, keepdim=True) + eps)
        comb_BTnn = comb_BTnn / (comb_BTnn.sum(dim=-2, keepdim=True) + eps)
    return comb_BTnn


class ManifoldHyperConnection(nn.Module):
    def __init__(self, streams: int, dim: int, sinkhorn_iters: int, eps: float, norm_eps: float, init_std: float):
        super().__init__()
        n = streams
        self.streams, self.sinkhorn_iters, self.eps, self.norm_eps, self.init_std = n, sinkhorn_iters, eps, norm_eps, init_std
        self.fn = nn.Parameter(torch.empty((2 + n) * n, n * dim))
        self.base = nn.Parameter(torch.empty((2 + n) * n))
        self.scale = nn.Parameter(torch.empty(3))
        self.reset_extra_parameters()

    @torch.no_grad()
    def reset_extra_parameters(self) -> None:
        nn.init.normal_(self.fn, std=self.init_std)
        self.base.zero_()
        self.scale.fill_(1.0)

    def forward(self, H_BTnD: torch.Tensor, sublayer) -> torch.Tensor:
        n = self.streams
        with fp32_matmuls(H_BTnD):
            mixes = F.linear(unweighted_rms_norm(H_BTnD, self.norm_eps), self.fn.float())
        pre_w, post_w, comb_w = mixes.split([n, n, n * n], dim=-1)
        pre_b, post_b, comb_b = self.base.float().split([n, n, n * n])
        pre_s, post_s, comb_s = self.scale.float().unbind(0)
        pre_BTn = torch.sigmoid(pre_w * pre_s + pre_b) + self.eps
        post_BTn = 2 * torch.sigmoid(post_w * post_s + post_b)
        comb_BTnn = torch.softmax((comb_w * comb_s + comb_b).unflatten(-1, (n, n)), dim=-1) + self.eps
        comb_BTnn = sinkhorn(comb_BTnn, self.sinkhorn_iters, self.eps)
        dtype = H_BTnD.dtype
        y_BTD = sublayer((pre_BTn[..., None] * H_BTnD).sum(dim=-2).to(dtype))
        return post_BTn.to(dtype)[..., None] * y_BTD[..., None, :] + comb_BTnn.to(dtype).transpose(-1, -2) @ H_BTnD


class ManifoldHyperHead(nn.Module):
    """The streams collapsed into one before the final norm: sum_i pre_i H_i, pre = sigmoid(scale x fn + base) + eps."""

    def __init__(self, streams: int, dim: int, eps: float, norm_eps: float, init_std: float):
        super().__init__()
        self.eps, self.norm_eps, self.init_std = eps, norm_eps, init_std
        self.hc_fn = nn.Parameter(torch.empty(streams, streams * dim))
        self.hc_base = nn.Parameter(torch.empty(streams))
        self.hc_scale = nn.Parameter(torch.empty(1))
        self.reset_extra_parameters()

    @torch.no_grad()
    def reset_extra_parameters(self) -> None:
        nn.init.normal_(self.hc_fn, std=self.init_std)
        self.hc_base.zero_()
        self.hc_scale.fill_(1.0)

    def forward(self, H_BTnD: torch.Tensor) -> torch.Tensor:
        with fp32_matmuls(H_BTnD):
            mixes = F.linear(unweighted_rms_norm(H_BTnD, self.norm_eps), self.hc_fn.float())
        pre_BTn = torch.sigmoid(mixes * self.hc_scale.float() + self.hc_base.float()) + self.eps
        return (pre_BTn[..., None] * H_BTnD).sum(dim=-2).to(H_BTnD.dtype)
