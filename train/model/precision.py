"""Computing in fp32 on purpose, also under torch.autocast.

Code that casts its inputs to fp32 for accuracy (the recurrent scans' states, router logits, hyper-connection
mixes) means its matmuls to run in fp32; torch.autocast (one process's bf16 training, train/parallel/fsdp.py)
would cast their inputs back to bf16. `fp32_matmuls(x)` turns autocast off on x's device type for such a
region, `computes_in_fp32` for a whole function (on its first argument's device). Without autocast, as under
FSDP2's mixed precision, neither changes anything.
"""

import contextlib
import functools

import torch


def autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype torch.autocast computes x's matmuls in, or None where it is off (or x's device has none,
    e.g. meta, where models are built unallocated)."""
    device = x.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return None


def fp32_matmuls(x: torch.Tensor):
    return contextlib.nullcontext() if autocast_dtype(x) is None else torch.autocast(x.device.type, enabled=False)


def computes_in_fp32(fn):
    @functools.wraps(fn)
    def run(first: torch.Tensor, *args, **kwargs):
        with fp32_matmuls(first):
            return fn(first, *args, **kwargs)
    return run
