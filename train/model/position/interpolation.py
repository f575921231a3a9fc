"""Linear rope scaling: Position Interpolation (Chen et al. 2023, arXiv 2306.15595; kaiokendev's
SuperHOT; transformers' rope_type "linear"). Positions are divided by the factor s, which is the same
as dividing every inverse frequency by s: positions up to s * L land in the trained angle range."""

import torch

from train.model.config import RopeScalingConfig


def linear_inv_freq(inv_freq_F: torch.Tensor, config: RopeScalingConfig) -> torch.Tensor:
    return inv_freq_F / config.factor
