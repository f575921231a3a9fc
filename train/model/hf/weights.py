"""Table-driven state-dict renaming between this project and Hugging Face.

An adapter lists `Rule`s; "{i}" stands for the layer index. A rule with several of our names
fuses them along dim 0 on the HF side (GPT-2's c_attn holds q, k and v); `transpose` is for
GPT-2's Conv1D, which stores weights as [in, out]. Rules whose tensors are absent (biases of a
bias-free model, the head of a tied model) are skipped; tensors no rule consumed raise.
"""

import re
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Rule:
    ours: tuple[str, ...]
    hf: str
    transpose: bool = False


def _concrete(rules: list[Rule], num_layers: int):
    for rule in rules:
        for i in range(num_layers) if "{i}" in rule.hf else [None]:
            yield [name.format(i=i) for name in rule.ours], rule.hf.format(i=i), rule.transpose


def _maybe_t(tensor: torch.Tensor, transpose: bool) -> torch.Tensor:
    return tensor.T.contiguous() if transpose and tensor.ndim == 2 else tensor


def to_hf(state: dict, rules: list[Rule], num_layers: int) -> dict:
    out, used = {}, set()
    for ours, hf, transpose in _concrete(rules, num_layers):
        if all(name in state for name in ours):
            out[hf] = _maybe_t(torch.cat([state[name] for name in ours], dim=0), transpose)
            used.update(ours)
    leftover = sorted(set(state) - used)
    if leftover:
        raise ValueError(f"these weights have no Hugging Face name in the adapter: {leftover[:8]}")
    return out


def from_hf(state: dict, rules: list[Rule], num_layers: int, ignored: tuple[str, ...] = ()) -> dict:
    """`ignored`: regexes of HF tensors to drop (buffers saved by old versions, a tied head)."""
    out, used = {}, set()
    for ours, hf, transpose in _concrete(rules, num_layers):
        if hf in state:
            for name, chunk in zip(ours, _maybe_t(state[hf], transpose).chunk(len(ours), dim=0)):
                out[name] = chunk.contiguous()
            used.add(hf)
    leftover = sorted(k for k in set(state) - used if not any(re.search(p, k) for p in ignored))
    if leftover:
        raise ValueError(f"these Hugging Face weights have no name in this project: {leftover[:8]}")
    return out
