"""AdamW with weight-decay groups, the learning-rate schedules (warmup + cosine, warmup-stable-decay), and
the MoE router-bias update as an optimizer pre-step hook.

Weight decay applies to matrices only: norms, biases, sinks and embedding tables are left alone, as in
GPT-2/nanoGPT and most open recipes (decaying embeddings shrinks rare tokens' vectors for no gain).
"""

import math
from typing import Dict

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from train.config import OptimConfig
from train.model.moe.metrics import moe_metrics
from train.parallel.world import all_reduce_sum

NO_DECAY_MODULES = (nn.Embedding,)


def parameter_groups(model: nn.Module, weight_decay: float):
    embedding_params = {id(p) for m in model.modules() if isinstance(m, NO_DECAY_MODULES) for p in m.parameters()}
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 and id(param) not in embedding_params else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, config: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    choice = config.implementation
    if choice not in ("auto", "fused", "foreach", "loop"):
        raise ValueError(f"optim.implementation={choice!r}; use auto, fused, foreach or loop")
    if choice == "auto":  # fused AdamW kernels exist for CUDA and CPU in recent torch
        choice = "fused" if device.type in ("cuda", "cpu") else "foreach"
    return torch.optim.AdamW(
        parameter_groups(model, config.weight_decay),
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        eps=config.eps,
        fused=choice == "fused",
        foreach=choice == "foreach",
    )


def lr_factor(step: int, config: OptimConfig, max_steps: int) -> float:
    """Multiplier of optim.lr at optimizer step `step` (0-based)."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    floor = config.min_lr_ratio
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "cosine":
        progress = min(1.0, (step - config.warmup_steps) / max(1, max_steps - config.warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if config.schedule == "wsd":  # Hu et al. 2024 (MiniCPM): hold the peak, then decay in the last steps
        decay_start = max_steps - int(config.decay_fraction * max_steps)
        if step < decay_start:
            return 1.0
        return 1.0 - (1 - floor) * (step - decay_start + 1) / max(1, max_steps - decay_start)
    raise ValueError(f"optim.schedule={config.schedule!r}; use cosine, wsd or constant")


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig, max_steps: int) -> LambdaLR:
    lr_factor(config.warmup_steps, config, max_steps)  # fail now on a bad schedule name, not at step N
    return LambdaLR(optimizer, lambda step: lr_factor(step, config, max_steps))


class RouterBiasUpdate:
    """Once per optimizer step, just before it (after all micro-batches of the step): the MoE layers'
    expert loads summed over all ranks -> the aux-loss-free router bias step (DeepSeek-V3), then the
    counters reset. A skipped (non-finite) step runs no optimizer step, so its loads carry over. The
    global loads are kept for the step's load metrics."""

    def __init__(self, model: nn.Module):
        self.model, self.layer_ids, self.loads = model, model.moe_layer_ids(), []

    def __call__(self, optimizer, args, kwargs) -> None:
        loads = self.model.expert_loads()
        summed = all_reduce_sum(torch.cat(loads))  # one collective for every layer, on the device
        self.loads = list(summed.split([len(load) for load in loads]))
        self.model.update_router_bias(self.loads)
        self.model.reset_expert_loads()

    def metrics(self) -> Dict[str, float]:
        return moe_metrics(self.loads, self.layer_ids)


def register_router_bias_update(optimizer: torch.optim.Optimizer, model: nn.Module) -> RouterBiasUpdate:
    update = RouterBiasUpdate(model)
    if update.layer_ids:
        optimizer.register_step_pre_hook(update)
    return update
