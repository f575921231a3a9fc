"""Activation functions by config name (shared by the MLP and the GLU family)."""

import functools

import torch.nn.functional as F

ACTIVATIONS = {
    "gelu": F.gelu,  # exact erf GELU (Hendrycks & Gimpel 2016)
    "gelu_tanh": functools.partial(F.gelu, approximate="tanh"),  # GPT-2's "gelu_new"
    "relu": F.relu,
    "silu": F.silu,  # a.k.a. swish
    "sigmoid": F.sigmoid,
}


def get_activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"ffn activation {name!r} is not supported; use one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]
