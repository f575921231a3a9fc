"""Load statistics of the MoE layers, as flat floats for the console, JSONL and W&B.

    moe_metrics(model.expert_loads(), model.moe_layer_ids())
    -> {"moe/layer3/load_min": ..., "moe/layer3/load_max": ..., "moe/layer3/load_cv": ...,
        "moe/layer3/zero_fraction": ..., "moe/layer3/dropped_fraction": ...}

Loads are one tensor per MoE layer, [E + 2]: choices per routed expert, the choices of
zero-computation experts, and the routed choices dropped by the capacity (Transformer.expert_loads).
load_min/max are the routed experts' shares of the routed choices relative to a perfectly even split
(1.0 = balanced; max 2.0 = twice its share), load_cv their coefficient of variation (std / mean; 0 =
balanced), zero_fraction the fraction of all choices that went to zero-computation experts,
dropped_fraction the fraction of routed choices that the capacity dropped (0 when dropless).
"""

import torch


def moe_metrics(loads: list[torch.Tensor], layer_ids: list[int] | None = None) -> dict[str, float]:
    layer_ids = list(range(len(loads))) if layer_ids is None else layer_ids
    out = {}
    for layer, load in zip(layer_ids, loads):
        load = load.detach().double().cpu()
        routed, zero, dropped = load[:-2], load[-2], load[-1]
        total = float(load[:-1].sum())
        relative = routed / routed.mean() if routed.sum() > 0 else torch.zeros_like(routed)
        out[f"moe/layer{layer}/load_min"] = float(relative.min())
        out[f"moe/layer{layer}/load_max"] = float(relative.max())
        out[f"moe/layer{layer}/load_cv"] = float(routed.std(correction=0) / routed.mean()) if routed.sum() > 0 else 0.0
        out[f"moe/layer{layer}/zero_fraction"] = float(zero) / total if total else 0.0
        out[f"moe/layer{layer}/dropped_fraction"] = float(dropped) / float(routed.sum()) if routed.sum() > 0 else 0.0
    return out
