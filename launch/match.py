"""Matched budgets: one size knob per point, searched so that the point's size equals the reference's.

    adjustment = match_knob(model_config, "model.ffns.swiglu.hidden_dim", "params", target, context=256)

The measures come from the inspector (train.model.summary.summarize): total parameters, active parameters
(MoE: what one token goes through), non-embedding parameters (total minus the embedding tables and the
output head: Kaplan et al. 2020's N, the fair size when widths differ at a small scale), or training FLOPs
per token at the training context. The knob is an integer model key (an FFN hidden dim, the model dim)
kept a multiple of `multiple_of`; the measure grows with it, so a doubling bracket and a bisection find
the closest value in a few dozen inspections of the model on the meta device.
"""

from dataclasses import asdict, dataclass
from typing import Dict

from omegaconf import OmegaConf

from train.model.config import ModelConfig, apply_overrides
from train.model.summary import Summary, summarize

MEASURES = {
    "params": lambda s: s.params_total,
    "active": lambda s: s.params_active,
    "nonembedding": lambda s: s.params_total - s.params["embeddings"] - s.params["output_head"],
    "flops": lambda s: s.flops_per_token,
}
MAX_DOUBLINGS = 30


def measure(summary: Summary, kind: str) -> int:
    return MEASURES[kind](summary)


@dataclass
class Adjustment:
    key: str  # the knob, e.g. model.ffns.swiglu.hidden_dim
    before: int  # the point's own value
    after: int  # the matched value
    measure: str  # params | active | nonembedding | flops
    target: int  # the reference's measure
    value: int  # the point's measure at `after`
    error: float  # value / target - 1

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


def match_knob(model: ModelConfig, key: str, kind: str, target: int, context: int, multiple_of: int = 8) -> Adjustment:
    """The multiple of `multiple_of` for `key` whose `kind` measure is closest to `target`."""
    if not key.startswith("model."):
        raise ValueError(f"knob {key}: the matched size must be a model key (model.ffns.<name>.hidden_dim, "
                         f"model.dim, ...)")
    relative = key.removeprefix("model.")
    before = OmegaConf.select(OmegaConf.structured(model), relative)
    if not isinstance(before, int) or isinstance(before, bool):
        raise ValueError(f"knob {key} is {before!r} in this point's model, not an integer size; pick another knob "
                         f"(set knob: in the sweep's YAML or pass --knob)")
    seen: Dict[int, int] = {}

    def at(value: int) -> int:
        if value not in seen:
            seen[value] = measure(summarize(apply_overrides(model, {relative: value}), context), kind)
        return seen[value]

    start = max(multiple_of, round(before / multiple_of) * multiple_of)
    if at(start) == at(2 * start):
        raise ValueError(f"knob {key} does not change this point's {kind}: is it used by the point's layers "
                         f"(model.layer_mixers / model.layer_ffns)? Pick the knob of a layer the point uses")
    low = high = start
    for _ in range(MAX_DOUBLINGS):  # bracket: at(low) <= target <= at(high), or low is the smallest value
        if at(high) < target:
            low, high = high, 2 * high
        elif at(low) > target and low > multiple_of:
            high, low = low, max(multiple_of, low // 2 // multiple_of * multiple_of)
        else:
            break
    while high - low > multiple_of:
        middle = (low + high) // 2 // multiple_of * multiple_of
        low, high = (middle, high) if at(middle) < target else (low, middle)
    after = min((low, high), key=lambda v: abs(at(v) - target))
    return Adjustment(key, before, after, kind, target, at(after), at(after) / target - 1)
