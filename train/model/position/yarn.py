"""YaRN frequencies (Peng et al. 2023, "YaRN: Efficient Context Window Extension", arXiv 2309.00071).

Per rotary pair i with base frequency theta_i = theta^(-2i/R), count its rotations r over the
original context L. High-frequency pairs (r > beta_fast) keep theta_i (extrapolate), low-frequency
pairs (r < beta_slow) are interpolated to theta_i / s, and pairs in between blend linearly (paper
eq. 18-19; as in the reference code and transformers.modeling_rope_utils the ramp is linear in the
pair index between the two boundary indices). Attention logits are scaled by 1/t with
sqrt(1/t) = 0.1 ln(s) + 1 (paper eq. 22), applied by scaling cos and sin. The DeepSeek variant
divides two such factors: mscale(s, mscale) / mscale(s, mscale_all_dim).
"""

import math

import torch

from train.model.config import YarnConfig


def _mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def yarn_attention_factor(config: YarnConfig) -> float:
    if config.attention_factor is not None:
        return config.attention_factor
    if config.mscale and config.mscale_all_dim:
        return _mscale(config.factor, config.mscale) / _mscale(config.factor, config.mscale_all_dim)
    return _mscale(config.factor)


def _pair_index_with_rotations(rotations: float, rot_dim: int, theta: float, context: int) -> float:
    """Solve context * theta^(-2i/R) / (2 pi) = rotations for the pair index i."""
    return rot_dim * math.log(context / (rotations * 2 * math.pi)) / (2 * math.log(theta))


def yarn_inv_freq(rot_dim: int, theta: float, config: YarnConfig, device=None) -> tuple[torch.Tensor, float]:
    """Returns (inverse frequencies [rot_dim/2], attention factor)."""
    low = _pair_index_with_rotations(config.beta_fast, rot_dim, theta, config.original_context)
    high = _pair_index_with_rotations(config.beta_slow, rot_dim, theta, config.original_context)
    if config.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rot_dim - 1)
    if low == high:
        high += 0.001  # avoid dividing by zero in the ramp

    base_freq = theta ** (torch.arange(0, rot_dim, 2, device=device).float() / rot_dim)
    extrapolated, interpolated = 1.0 / base_freq, 1.0 / (config.factor * base_freq)
    ramp = ((torch.arange(rot_dim // 2, device=device).float() - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1 for fast-rotating pairs (extrapolate), 0 for slow ones (interpolate)
    return interpolated * (1 - keep) + extrapolated * keep, yarn_attention_factor(config)
