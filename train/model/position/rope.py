"""Rotary position embeddings (Su et al. 2021, RoFormer, arXiv 2104.09864).

Each pair of dims (x1, x2) of a query/key head is rotated by angle position * inv_freq[i], so the
dot product q.k depends only on the relative position. Two pairings exist in the wild:
- half-rotated (GPT-NeoX, Hugging Face Llama/Qwen): pair i is (x[i], x[i + R/2]);
- interleaved (GPT-J, RoFormer, Meta's complex-number Llama code): pair i is (x[2i], x[2i+1]).
Partial rotary (GPT-NeoX, Phi) rotates only the first R = fraction * head_dim dims and passes the rest.
YaRN (position/yarn.py) changes only the frequencies and scales cos/sin by its attention factor;
position.scaling rescales plain rope's frequencies: linear (position/interpolation.py), dynamic NTK
(position/dynamic_ntk.py, from the forward's positions) and Llama 3.1's (position/llama3.py).
"""

import torch
from torch import nn

from train.model.config import PositionConfig
from train.model.position.dynamic_ntk import dynamic_ntk_inv_freq
from train.model.position.interpolation import linear_inv_freq
from train.model.position.llama3 import llama3_inv_freq
from train.model.position.yarn import yarn_inv_freq

SCALINGS = {"linear": linear_inv_freq, "llama3": llama3_inv_freq}  # and "dynamic", which reads the positions
SCALING_KINDS = ("none", "dynamic", *SCALINGS)


def rope_inv_freq(rot_dim: int, theta: float, device=None) -> torch.Tensor:
    """theta^(-2i/R) for i < R/2; written as in the HF reference so the fp32 values are bit-identical."""
    return 1.0 / (theta ** (torch.arange(0, rot_dim, 2, dtype=torch.int64, device=device).float() / rot_dim))


class Rotary(nn.Module):
    """Applies rope/yarn to x_BTHK at given positions. Stateless: frequencies are recomputed on the
    input's device (a few hundred floats), which keeps the module meta-device safe."""

    def __init__(self, config: PositionConfig, head_dim: int):
        super().__init__()
        self.config = config
        self.rot_dim = int(head_dim * config.rotary_fraction)
        if self.rot_dim % 2 or self.rot_dim == 0:
            raise ValueError(
                f"position.rotary_fraction={config.rotary_fraction} gives {self.rot_dim} rotary dims of "
                f"head_dim={head_dim}; it must be a positive even number"
            )
        scaling = config.scaling.kind
        if scaling not in SCALING_KINDS:
            raise ValueError(f"position.scaling.kind={scaling!r} is not supported; use one of {list(SCALING_KINDS)}")
        if scaling != "none" and config.kind != "rope":
            raise ValueError(
                f"position.scaling.kind={scaling!r} rescales plain rope; position.kind={config.kind!r} has its own "
                f"frequencies: set position.kind=rope or position.scaling.kind=none"
            )

    def frequencies(self, positions_BT: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(inverse frequencies [rot_dim/2] on the positions' device, the cos/sin scale)."""
        theta, scaling, device = self.config.theta, self.config.scaling, positions_BT.device
        if self.config.kind == "yarn":
            return yarn_inv_freq(self.rot_dim, theta, self.config.yarn, device)
        if scaling.kind == "dynamic":
            return dynamic_ntk_inv_freq(self.rot_dim, theta, scaling, positions_BT), 1.0
        inv_freq_F = rope_inv_freq(self.rot_dim, theta, device)
        return (SCALINGS[scaling.kind](inv_freq_F, scaling) if scaling.kind in SCALINGS else inv_freq_F), 1.0

    def forward(self, x_BTHK: torch.Tensor, positions_BT: torch.Tensor) -> torch.Tensor:
        inv_freq_F, attention_factor = self.frequencies(positions_BT)
        angles_BTF = positions_BT[..., None].float() * inv_freq_F
        cos_BT1F = (angles_BTF.cos() * attention_factor)[:, :, None, :]
        sin_BT1F = (angles_BTF.sin() * attention_factor)[:, :, None, :]
        x_rot, x_pass = x_BTHK[..., : self.rot_dim].float(), x_BTHK[..., self.rot_dim :]
        if self.config.interleaved:
            x1, x2 = x_rot[..., 0::2], x_rot[..., 1::2]
        else:
            x1, x2 = x_rot.chunk(2, dim=-1)
        y1, y2 = x1 * cos_BT1F - x2 * sin_BT1F, x2 * cos_BT1F + x1 * sin_BT1F
        y_rot = torch.stack([y1, y2], dim=-1).flatten(-2) if self.config.interleaved else torch.cat([y1, y2], -1)
        return torch.cat([y_rot.type_as(x_BTHK), x_pass], dim=-1)
