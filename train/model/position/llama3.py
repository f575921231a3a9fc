"""Llama 3.1 rope scaling (Meta, llama-models `apply_scaling`; transformers' _compute_llama3_parameters).

Per rotary pair with wavelength w = 2 pi / theta_i, against the original context L:
w < L / high_freq_factor (fast pairs) keep theta_i; w > L / low_freq_factor (slow pairs) are
interpolated to theta_i / s; pairs in between blend with the smooth factor
    g = (L / w - low_freq_factor) / (high_freq_factor - low_freq_factor),
    theta_i' = (1 - g) * theta_i / s + g * theta_i.
The attention logits are not rescaled. Written in the reference's operation order so that the fp32
values are bit-identical.
"""

import math

import torch

from train.model.config import RopeScalingConfig


def llama3_inv_freq(inv_freq_F: torch.Tensor, config: RopeScalingConfig) -> torch.Tensor:
    """inv_freq_F: the unscaled rope frequencies theta^(-2i/R)."""
    s, context = config.factor, config.original_context
    low_freq_wavelen, high_freq_wavelen = context / config.low_freq_factor, context / config.high_freq_factor
    wavelen_F = 2 * math.pi / inv_freq_F
    slow_scaled_F = torch.where(wavelen_F > low_freq_wavelen, inv_freq_F / s, inv_freq_F)
    smooth_F = (context / wavelen_F - config.low_freq_factor) / (config.high_freq_factor - config.low_freq_factor)
    smoothed_F = (1 - smooth_F) * slow_scaled_F / s + smooth_F * slow_scaled_F
    medium_F = (wavelen_F >= high_freq_wavelen) & (wavelen_F <= low_freq_wavelen)
    return torch.where(medium_F, smoothed_F, slow_scaled_F)
