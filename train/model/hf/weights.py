"""Table-driven state-dict renaming between this project and Hugging Face.

An adapter lists `Rule`s; "{i}" stands for the layer index and "{e}" for the expert index; "{m}" for the
index of a multi-token-prediction module (ours: mtp.{m}.*) whose HF layer index is "{n}" = num_layers + m. A rule
with several of our names fuses them on the HF side: along dim 0 (GPT-2's c_attn holds q, k and v),
or with `interleave` alternately along the last dim (GPT-OSS's gate_up_proj holds gate at even and
up at odd columns). `transpose` swaps the last two dims (GPT-2's Conv1D stores [in, out]; GPT-OSS's
experts [E, in, out]). An "{e}" rule maps one of our [E, ...] tensors to E per-expert HF tensors
(transformers saves experts.0.gate_proj.weight, experts.1..., even for models that run 3-D weights).
Rules whose tensors are absent (biases of a bias-free model, the head of a tied model) are skipped;
tensors no rule consumed raise. Per-expert HF tensors past the layer's expert count are dropped:
LongCat-Flash saves gate/up projections for its zero-computation experts, which never run.
"""

import re
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Rule:
    ours: tuple[str, ...]
    hf: str
    transpose: bool = False
    interleave: bool = False


MAX_MTP_MODULES = 8  # how many "{m}" modules a rule looks for; the absent ones are skipped like absent biases


def _concrete(rules: list[Rule], num_layers: int):
    for rule in rules:
        if "{m}" in rule.ours[0]:
            for m in range(MAX_MTP_MODULES):
                yield [name.format(m=m) for name in rule.ours], rule.hf.format(n=num_layers + m, e="{e}"), rule
            continue
        for i in range(num_layers) if "{i}" in rule.hf else [None]:
            yield [name.format(i=i) for name in rule.ours], rule.hf.format(i=i, e="{e}"), rule


def _maybe_t(tensor: torch.Tensor, transpose: bool) -> torch.Tensor:
    return tensor.transpose(-2, -1).contiguous() if transpose and tensor.ndim >= 2 else tensor


def _fuse(parts: list[torch.Tensor], rule: Rule) -> torch.Tensor:
    if rule.interleave:
        return torch.stack([_maybe_t(p, rule.transpose) for p in parts], dim=-1).flatten(-2)
    return _maybe_t(torch.cat(parts, dim=0), rule.transpose)


def _split(tensor: torch.Tensor, n: int, rule: Rule) -> list[torch.Tensor]:
    if rule.interleave:
        return [_maybe_t(tensor[..., j::n], rule.transpose) for j in range(n)]
    return list(_maybe_t(tensor, rule.transpose).chunk(n, dim=0))


def to_hf(state: dict, rules: list[Rule], num_layers: int) -> dict:
    out, used = {}, set()
    for ours, hf, rule in _concrete(rules, num_layers):
        if all(name in state for name in ours):
            fused = _fuse([state[name] for name in ours], rule)
            for e, tensor in enumerate(fused) if "{e}" in hf else [(None, fused)]:
                out[hf.format(e=e)] = tensor.contiguous()
            used.update(ours)
    leftover = sorted(set(state) - used)
    if leftover:
        raise ValueError(f"these weights have no Hugging Face name in the adapter: {leftover[:8]}")
    return out


def _experts(state: dict, hf: str) -> int:
    e = 0
    while hf.format(e=e) in state:
        e += 1
    return e


@dataclass(frozen=True)
class Source:
    """Where our tensors `ours` come from: the HF tensors `hf` (one, or one per expert, stacked) under `rule`."""

    ours: tuple[str, ...]
    hf: tuple[str, ...]
    rule: Rule
    experts: bool

    @property
    def direct(self) -> bool:
        """One of our tensors per HF tensor (or per stack of experts): a region of ours is a region of theirs."""
        return len(self.ours) == 1 and not self.rule.interleave

    def combine(self, tensors: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Our tensors from the whole HF tensors `tensors` (in the order of `hf`)."""
        tensor = torch.stack(tensors) if self.experts else tensors[0]
        return {name: chunk.contiguous() for name, chunk in zip(self.ours, _split(tensor, len(self.ours), self.rule))}


def hf_sources(names, rules: list[Rule], num_layers: int, ignored: tuple[str, ...] = ()) -> list[Source]:
    """How the HF tensors `names` map to ours; ValueError naming the ones no rule (and no `ignored` regex,
    for buffers saved by old versions or a tied head) consumes."""
    names, concrete = set(names), list(_concrete(rules, num_layers))
    expert_counts = {}  # the experts of a layer: the fewest any of its "{e}" tensors has
    for _, hf, _ in concrete:
        if "{e}" in hf:
            prefix = hf.split("{e}")[0]
            expert_counts[prefix] = min(expert_counts.get(prefix, 1 << 30), _experts(names, hf))
    sources, used = [], set()
    for ours, hf, rule in concrete:
        hf_names = [hf.format(e=e) for e in range(expert_counts[hf.split("{e}")[0]])] if "{e}" in hf else [hf]
        if hf_names and all(n in names for n in hf_names):
            sources.append(Source(tuple(ours), tuple(hf_names), rule, "{e}" in hf))
            used.update(hf_names)
            if "{e}" in hf:  # the extra per-expert tensors past the layer's expert count
                used.update(hf.format(e=e) for e in range(len(hf_names), _experts(names, hf)))
    leftover = sorted(k for k in names - used if not any(re.search(p, k) for p in ignored))
    if leftover:
        raise ValueError(f"these Hugging Face weights have no name in this project: {leftover[:8]}")
    return sources


def from_hf(state: dict, rules: list[Rule], num_layers: int, ignored: tuple[str, ...] = ()) -> dict:
    out = {}
    for source in hf_sources(state, rules, num_layers, ignored):
        out.update(source.combine([state[n] for n in source.hf]))
    return out
