"""Activation functions by config name (shared by the MLP, the GLU family and the routed experts)."""

import functools

import torch
import torch.nn.functional as F


def relu_squared(x: torch.Tensor) -> torch.Tensor:
    """relu(x)^2 (Primer, So et al. 2021, arXiv 2109.08668 sec. 3)."""
    return torch.square(F.relu(x))


ACTIVATIONS = {
    "gelu": F.gelu,  # exact erf GELU (Hendrycks & Gimpel 2016)
    "gelu_tanh": functools.partial(F.gelu, approximate="tanh"),  # GPT-2's "gelu_new"
    "relu": F.relu,
    "relu2": relu_squared,
    "silu": F.silu,  # a.k.a. swish
    "sigmoid": F.sigmoid,
}


def get_activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"ffn activation {name!r} is not supported; use one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]
