"""Apply parallelism to a plain model from the outside: expert parallelism, tensor parallelism, activation
checkpointing, torch.compile and FSDP2 (`fully_shard`) over the data-parallel mesh, and fill a sharded model
from a model folder, each rank reading only its own shards (`read_local_shards`). The model code never sees
any of it.

Order as in torchtitan: experts cut to this rank's (on the plain model, clean parameter names), then the
tensor-parallel plan (train/parallel/tensor.py), then checkpoint wrappers, then compile, then shard each
block and the root (so each block's parameters are gathered just before it runs and freed after); with
pipeline parallelism, each of the rank's stages is split off first and is its own root. With
`parallel.ep > 1` the experts are their own FSDP units over the edp mesh (train/parallel/expert.py); the
dense parameters are sharded over the dp mesh (with tp, tensor-parallel parameters on a 2-D (dp, tp) mesh).

One process (`ParallelDims.fsdp` false) trains the plain model: FSDP2 over one rank would only copy each
block's parameters into and out of its all-gather, and the gradients through its reduce-scatter, every
step. Its mixed precision (parallel.param_dtype, fp32 master weights) comes from torch.autocast around each
forward and its loss instead (`forward_precision`), as torchtitan's `maybe_enable_amp` does.
"""

import contextlib
import functools
import warnings
from typing import Callable, ContextManager

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.checkpoint.state_dict import get_model_state_dict
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from train.config import ParallelConfig
from train.model.load import read_weights
from train.model.moe.layer import MoE
from train.parallel.context import ZigZagSplit
from train.parallel.dims import ParallelDims
from train.parallel.expert import apply_expert_parallel, shard_experts
from train.parallel.pipeline import StageModule, staged_model
from train.parallel.tensor import apply_tensor_parallel

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


def compiles_whole(block: nn.Module, config: ParallelConfig, dims: ParallelDims) -> bool:
    """Whether a block compiles to one graph (fullgraph=True: a graph break is an error, not a silent
    slow path). Every block does, except an MoE block whose experts need their counts on the host: the
    all-to-all of expert parallelism, or fp32 experts (grouped matmuls compile in bf16 only)."""
    has_experts = any(isinstance(m, MoE) for m in block.modules())
    return not has_experts or (dims.ep == 1 and config.param_dtype == "bf16")


def parallelize(model: nn.Module, config: ParallelConfig, dims: ParallelDims) -> nn.Module:
    """Shard `model` in place and return it; with parallel.ep > 1, `model` must hold real weights
    (all experts, identical on every rank): each rank keeps its own experts before sharding. With
    parallel.pp > 1 it returns this rank's pipeline stages (train/parallel/pipeline.py: a StagedModel), each
    parallelised as a whole model would be and sharded as its own root."""
    for key, value in (("param_dtype", config.param_dtype), ("reduce_dtype", config.reduce_dtype)):
        if value not in DTYPES:
            raise ValueError(f"parallel.{key}={value!r}; use one of {', '.join(DTYPES)}")
    policy = MixedPrecisionPolicy(param_dtype=DTYPES[config.param_dtype], reduce_dtype=DTYPES[config.reduce_dtype])
    if dims.pp > 1:
        def parallelize_stage(stage: StageModule) -> None:
            with warnings.catch_warnings():  # a stage lacks the embedding or the head: their TP plan entries do not apply
                warnings.filterwarnings("ignore", message="Parallelize plan key")
                shard_blocks(stage.part, config, dims, policy)
            fully_shard(stage, mesh=dims.dp_mesh, mp_policy=policy, reshard_after_forward=False)

        return staged_model(model, config, dims.pp_rank, parallelize_stage)
    shard_blocks(model, config, dims, policy)
    if not dims.fsdp:
        return model
    # The loss calls model.hidden_states() and then reads model.output_weight() (train/loss.py fuses
    # the output projection into the cross-entropy), so hidden_states is an FSDP forward too, and the
    # root's parameters (embeddings, final norm, output head) stay gathered until backward.
    fully_shard(model, mesh=dims.dp_mesh, mp_policy=policy, reshard_after_forward=False)
    register_fsdp_forward_method(model, "hidden_states")
    if model.mtp is not None:  # the MTP loss runs the MTP modules on hidden_states' output (train/mtp_loss.py)
        register_fsdp_forward_method(model, "mtp_hidden_states")
    return model


def shard_blocks(model: nn.Module, config: ParallelConfig, dims: ParallelDims, policy: MixedPrecisionPolicy) -> None:
    """Everything but the root's sharding: experts, tensor and context parallelism, checkpointing, compile,
    and FSDP per block (each block's parameters gathered just before it runs) where FSDP wraps the model."""
    if dims.ep > 1:
        apply_expert_parallel(model, dims)
    if dims.tp > 1:
        apply_tensor_parallel(model, dims.tp_mesh)
    if dims.cp > 1:  # each window split over the cp ranks (train/parallel/context.py)
        model.sequence_split = ZigZagSplit(dims.cp_mesh.get_group())
    apply_activation_checkpointing(model, config.activation_checkpointing)
    if config.compile:
        for index, block in enumerate(model.layers):
            model.layers[index] = torch.compile(block, fullgraph=compiles_whole(block, config, dims))
    if not dims.fsdp:
        return
    if dims.ep > 1:  # before the blocks are sharded: the experts are their own FSDP units over edp
        shard_experts(model, dims, mp_policy=policy)
    mtp_blocks = [module.block for module in model.mtp] if model.mtp is not None else []
    for block in [*model.layers, *mtp_blocks]:
        fully_shard(block, mesh=dims.dp_mesh, mp_policy=policy, reshard_after_forward=config.reshard_after_forward)


def forward_precision(config: ParallelConfig, dims: ParallelDims, device: torch.device) -> Callable[[], ContextManager]:
    """A new context for each forward and its loss (not the backward, as torch.autocast's docs advise). FSDP2
    computes in parallel.param_dtype itself (it casts the parameters it gathers): nothing then; the plain
    model of one process runs under torch.autocast to param_dtype on its device's type."""
    dtype = DTYPES[config.param_dtype]
    if dims.fsdp or dtype == torch.float32:
        return contextlib.nullcontext
    return functools.partial(torch.autocast, device.type, dtype)


@torch.no_grad()
def read_local_shards(model: torch.nn.Module, folder: str, config) -> None:
    """Fill a sharded model from a model folder: each rank reads only the rows of its own shards (a DTensor's
    local chunk: FSDP2's Shard(0) rows of every mesh dimension it is sharded on), one tensor at a time, and
    converts them to the parameter's dtype in place. No rank holds more than its shards and one tensor (a
    whole one only where an adapter rule fuses several). Buffers are not sharded: read whole."""
    targets = get_model_state_dict(model)  # clean names (no wrapper prefixes); the tensors share the storage
    regions = {}
    for name, tensor in targets.items():
        shape, offset = (compute_local_shape_and_global_offset(tensor.shape, tensor.device_mesh, tensor.placements)
                         if isinstance(tensor, DTensor) else (tensor.shape, (0,) * tensor.ndim))
        regions[name] = tuple(slice(o, o + n) for o, n in zip(offset, shape))
    for name, piece in read_weights(folder, config, regions):
        target = targets[name]
        (target.to_local() if isinstance(target, DTensor) else target).copy_(piece)
