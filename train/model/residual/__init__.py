"""How sublayers meet the residual stream (`model.residual`, train/model/config.py:ResidualConfig): the
parallel block (parallel_block.py), hyper-connections and their manifold-constrained variant
(hyper_connections.py, manifold_hyper_connections.py), value residuals (value_residual.py) and the scaling
of the branches (branch_scale.py). The builders return None for the plain residual x + f(x)."""

from torch import nn

from train.model.config import ModelConfig
from train.model.residual.branch_scale import DepthScale, LayerScale
from train.model.residual.hyper_connections import HyperConnection
from train.model.residual.manifold_hyper_connections import ManifoldHyperConnection, ManifoldHyperHead


def build_branch_scale(config: ModelConfig) -> nn.Module | None:
    r = config.residual
    if r.branch_scale == "layerscale":
        return LayerScale(config.dim, r.layerscale_init)
    if r.branch_scale == "depth":
        return DepthScale(2 * config.num_layers)
    return None


def build_connection(config: ModelConfig, sublayer: int) -> nn.Module | None:
    """The hyper-connection of sublayer `sublayer` (2 i: layer i's mixer, 2 i + 1: its feed-forward), or None."""
    hc = config.residual.hyper_connections
    if hc.kind in ("static", "dynamic"):
        return HyperConnection(hc.streams, config.dim, sublayer, hc.kind == "dynamic", config.norm)
    if hc.kind == "manifold":
        return ManifoldHyperConnection(hc.streams, config.dim, hc.sinkhorn_iters, hc.eps, config.norm.eps, config.init_std)
    return None


class StreamSum(nn.Module):
    """Hyper-connections' last step: the streams [B, T, n, D] summed into one (arXiv 2409.19606 sec. 3)."""

    def forward(self, H_BTnD):
        return H_BTnD.sum(dim=-2)


def build_stream_head(config: ModelConfig) -> nn.Module | None:
    """What collapses the streams before the final norm (None: one stream)."""
    hc = config.residual.hyper_connections
    if hc.kind == "manifold":
        return ManifoldHyperHead(hc.streams, config.dim, hc.eps, config.norm.eps, config.init_std)
    return StreamSum() if hc.kind != "none" else None
