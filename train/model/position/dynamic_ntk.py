"""Dynamic NTK-aware rope scaling (bloc97 and emozilla, 2023, "Dynamically Scaled RoPE"; transformers'
_compute_dynamic_ntk_parameters and dynamic_rope_update, rope_type "dynamic").

While the sequence fits the original context L the frequencies are plain rope. Beyond it, with
n = the largest position + 1, the base grows so that the slowest pair stretches over n:
    theta' = theta * (s * n / L - (s - 1)) ^ (R / (R - 2)).
n is taken over the whole batch of positions of one forward, as transformers does (torch.max of
position_ids). It is computed on the device from the positions tensor, so there is no host sync;
a cached decode step (one position t) gets n = t + 1, as in transformers. transformers also keeps the
largest n seen in earlier forwards until a sequence drops back under L; this module has no such state,
so the two differ only for a forward that follows a longer one without dropping under L.
"""

import torch

from train.model.config import RopeScalingConfig


def dynamic_ntk_inv_freq(rot_dim: int, theta: float, config: RopeScalingConfig, positions: torch.Tensor) -> torch.Tensor:
    """Frequencies [rot_dim/2] for a forward over `positions` (any shape); stays on their device."""
    s, context = config.factor, config.original_context
    seq_len = (positions.max() + 1).clamp(min=context)  # a 0-d tensor: no .item(), no sync
    base = theta * ((s * seq_len / context) - (s - 1)) ** (rot_dim / (rot_dim - 2))
    exponents_F = torch.arange(0, rot_dim, 2, dtype=torch.int64, device=positions.device).float() / rot_dim
    return 1.0 / (base ** exponents_F)
