"""Apply parallelism to a plain model from the outside: activation checkpointing, torch.compile
and FSDP2 (`fully_shard`) over the data-parallel mesh. The model code never sees any of it.

Order as in torchtitan: checkpoint wrappers, then compile, then shard each block and the root
(so each block's parameters are gathered just before it runs and freed after).

With `parallel.ep > 1` (expert parallelism, train/expert_parallel.py) every MoE layer first keeps only
its E / ep local experts (all-to-all dispatch), which are sharded over the expert-data-parallel mesh
(`edp`, the ranks holding the same experts) with the world-size gradient divisor; the dense parameters
are sharded over the data-parallel mesh as without EP. The ExpertParallel state is kept on the model as
`model.expert_parallel` (None without EP) for checkpoints and the final export.
"""

import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch import nn

from train.config import ParallelConfig
from train.distributed import World
from train.expert_parallel import ExpertParallel, apply_expert_parallel, shard_experts

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def apply_activation_checkpointing(model: nn.Module, mode: str) -> None:
    """full: recompute every block in backward; selective: every other block (half the saving, half the cost)."""
    if mode not in ("none", "selective", "full"):
        raise ValueError(f"parallel.activation_checkpointing={mode!r}; use none, selective or full")
    if mode == "none":
        return
    for index, block in enumerate(model.layers):
        if mode == "full" or index % 2 == 0:
            model.layers[index] = checkpoint_wrapper(block, preserve_rng_state=False)


def check_expert_parallel(model: nn.Module, config: ParallelConfig, world: World) -> None:
    """ep must divide the data-parallel size, and the model must have MoE layers."""
    dp_size = world.mesh["dp_replicate"].size() * world.mesh["dp_shard"].size()
    if config.ep < 1 or dp_size % config.ep:
        raise ValueError(f"parallel.ep={config.ep} must be >= 1 and divide the data-parallel size {dp_size} "
                         f"(parallel.dp_replicate x parallel.dp_shard)")
    if config.ep > 1 and not model.moe_layers():
        raise ValueError(f"parallel.ep={config.ep} needs a model with MoE layers; this model has none (use parallel.ep=1)")


def parallelize(model: nn.Module, config: ParallelConfig, world: World) -> nn.Module:
    """Shard `model` in place and return it; with parallel.ep > 1, `model` must hold real weights
    (all experts, identical on every rank): each rank keeps its own experts before sharding."""
    check_expert_parallel(model, config, world)
    expert_parallel: ExpertParallel | None = None
    if config.ep > 1:  # on the plain model (clean parameter names), before any wrapper
        expert_parallel = apply_expert_parallel(model, config.ep, world.device.type)
    for key, value in (("param_dtype", config.param_dtype), ("reduce_dtype", config.reduce_dtype)):
        if value not in DTYPES:
            raise ValueError(f"parallel.{key}={value!r}; use one of {', '.join(DTYPES)}")
    apply_activation_checkpointing(model, config.activation_checkpointing)
    if config.compile:
        for index, block in enumerate(model.layers):
            model.layers[index] = torch.compile(block)
    policy = MixedPrecisionPolicy(param_dtype=DTYPES[config.param_dtype], reduce_dtype=DTYPES[config.reduce_dtype])
    # HSDP when dp_replicate > 1: replicate across the first mesh dimension, shard across the second.
    mesh = world.mesh if world.mesh["dp_replicate"].size() > 1 else world.mesh["dp_shard"]
    if expert_parallel is not None:  # before the blocks are sharded: the experts are their own FSDP units over edp
        shard_experts(expert_parallel, mp_policy=policy)
    for block in model.layers:
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=config.reshard_after_forward)
    # The loss calls model.hidden_states() and then reads model.output_weight() (train/loss.py fuses
    # the output projection into the cross-entropy), so hidden_states is an FSDP forward too, and the
    # root's parameters (embeddings, final norm, output head) stay gathered until backward.
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=False)
    register_fsdp_forward_method(model, "hidden_states")
    model.expert_parallel = expert_parallel
    return model
