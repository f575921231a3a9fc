"""Will it fit: the memory one device needs for a model under a layout, before anything runs.

    estimate_memory(model_config, parallel_config, world_size, context, micro_batch) -> MemoryEstimate

Counted on the model built on the meta device, each parameter divided as the layout divides it: by tp
where tensor parallelism splits its module (train/parallel/tensor.py's plan, the same one training
applies), then by the FSDP ranks (dp_shard x cp; HSDP replicas hold copies); routed experts under
expert parallelism by the whole world (ep x edp). Per device:
- weights, gradients: fp32 shards (FSDP keeps the sharded parameters and reduces gradients in fp32);
- AdamW moments: two fp32 tensors per parameter shard;
- gathered weights: FSDP's working set in the compute dtype (parallel.param_dtype): the root's parameters
  (embedding, head), which stay gathered, plus two blocks (the running one and the prefetched next), or
  every block with parallel.reshard_after_forward=false; none without FSDP sharding; on one process (no
  FSDP) torch.autocast's compute-dtype copy of every weight, kept for backward (none in fp32);
- activations (an estimate, +-30%): what backward keeps per token and layer, in the compute dtype: the
  input and output of every linear layer (for routed experts, of each of the token's routed experts)
  and the fp32 input of every norm, split by tp (sequence parallelism) except in MoE layers, which are
  replicated within TP; with cp > 1 the gathered keys and values of the whole window; the fused loss's
  hidden-state and weight gradients and one chunk of fp32 logits. Attention is assumed to keep no T x T scores
  (FlashAttention / FlexAttention on GPUs; the CPU's dense path keeps them). Activation checkpointing:
  full keeps each block's input plus one block's activations; selective does so for every other block.
With pipeline parallelism (parallel.pp) each pp rank holds its stages' layers (train/parallel/pipeline.py's
split), the first stage's the embedding, the last stage's the final norm, head and loss; it keeps the
activations of the micro-batches in flight, pp - r on rank r as in 1F1B (the looped and V schedules keep
about as many; GPipe keeps all of a step's, more than counted). The busiest rank's figures are given.
Not counted: the CUDA context and allocator fragmentation, communication buffers, the KV cache.
"""

from dataclasses import dataclass

import torch
from torch import nn

from train.config import ParallelConfig
from train.model.config import ModelConfig
from train.model.moe.layer import MoE
from train.model.norm import GatedRMSNorm, LayerNorm, RMSNorm
from train.model.summary import DTYPES
from train.model.transformer import Transformer
from train.parallel.dims import ParallelDims
from train.parallel.expert import is_expert_parameter
from train.parallel.pipeline import check_pipeline, rank_stages, stage_layers
from train.parallel.tensor import sharded_modules

NORMS = (RMSNorm, LayerNorm, GatedRMSNorm)


@dataclass
class MemoryEstimate:
    layout: str
    tokens: int  # per device and forward (micro-batch x context / cp)
    params: int  # parameters whose (fp32) shards this device holds
    weight_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    gathered_bytes: int
    activation_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.grad_bytes + self.optimizer_bytes + self.gathered_bytes + self.activation_bytes


def block_activation_elements(block: nn.Module, tp: int) -> float:
    """Elements backward keeps per token in one block (module docstring), fp32 norm inputs counted twice."""
    elements = 0.0
    for module in block.modules():
        if isinstance(module, nn.Linear):
            elements += (module.in_features + module.out_features) / tp
        elif isinstance(module, NORMS):
            elements += 2 * module.weight.numel() / tp
    for moe in (m for m in block.modules() if isinstance(m, MoE)):  # replicated within TP: undo the split above
        routed = moe.top_k * moe.num_experts / (moe.num_experts + moe.num_zero_experts)
        E, F, D = moe.experts.w1_EFD.shape
        shared = sum(m.in_features + m.out_features for m in moe.modules() if isinstance(m, nn.Linear))
        elements += routed * (2 * D + 3 * F) + shared * (1 - 1 / tp)
    return elements


def estimate_memory(model: ModelConfig, parallel: ParallelConfig, world_size: int, context: int, micro_batch: int,
                    loss_chunk_tokens: int = 512) -> MemoryEstimate:
    """The memory of the device that needs the most (with pipeline parallelism, of the busiest pp rank)."""
    dims = ParallelDims.resolve(parallel, world_size)
    dims.check_model(model, context)
    check_pipeline(parallel, model, "pretrain")
    with torch.device("meta"):
        net = Transformer(model)
    if dims.pp == 1:
        return device_memory(net, parallel, dims, context, micro_batch, loss_chunk_tokens, set(range(model.num_layers)),
                             embeds=True, heads=True, in_flight=1)
    layers = stage_layers(parallel, model.num_layers)
    ranks = [rank_stages(parallel, rank) for rank in range(dims.pp)]
    # 1F1B: rank r keeps the activations of pp - r micro-batches until their backward
    return max((device_memory(net, parallel, dims, context, micro_batch, loss_chunk_tokens,
                              {i for stage in stages for i in layers[stage]}, embeds=0 in stages,
                              heads=len(layers) - 1 in stages, in_flight=dims.pp - rank)
                for rank, stages in enumerate(ranks)), key=lambda estimate: estimate.total_bytes)


def device_memory(net: Transformer, parallel: ParallelConfig, dims: ParallelDims, context: int, micro_batch: int,
                  loss_chunk_tokens: int, layer_ids: set, embeds: bool, heads: bool, in_flight: int) -> MemoryEstimate:
    """One device's memory when it holds the layers `layer_ids`, the embedding (`embeds`) and the final norm and
    head (`heads`), and keeps the activations of `in_flight` micro-batches."""
    model = net.config
    split = sharded_modules(net) if dims.tp > 1 else set()
    fsdp = dims.dp_shard * dims.cp
    compute = DTYPES[parallel.param_dtype].itemsize
    held, gathered_root, gathered_blocks = 0.0, 0.0, {i: 0.0 for i in layer_ids}
    for module_name, module in net.named_modules():
        top, _, rest = module_name.partition(".")
        if top == "layers" and rest and int(rest.partition(".")[0]) not in layer_ids:
            continue
        if (top in ("embed", "position") and not embeds) or (top in ("final_norm", "output") and not heads):
            continue
        for name, param in module.named_parameters(recurse=False):
            if is_expert_parameter(f"{module_name}.{name}"):
                local = param.numel() / dims.ep  # this rank's experts, then FSDP over the edp ranks
                shard = local / (dims.world_size // dims.ep) if dims.ep > 1 else local / fsdp
            else:
                local = param.numel() / (dims.tp if module_name in split else 1)
                shard = local / fsdp
            held += shard
            if top == "layers" and rest:
                gathered_blocks[int(rest.partition(".")[0])] += local
            else:
                gathered_root += local
    kept_blocks = len(gathered_blocks) if not parallel.reshard_after_forward else min(2, len(gathered_blocks))
    gathered = 0.0 if fsdp == 1 else (gathered_root + sum(sorted(gathered_blocks.values())[-kept_blocks:])) * compute
    if not dims.fsdp:  # one process: torch.autocast's copies (train/parallel/fsdp.py)
        gathered = 0.0 if compute == 4 else (gathered_root + sum(gathered_blocks.values())) * compute

    tokens = micro_batch * context // dims.cp
    blocks = [net.layers[i] for i in sorted(layer_ids)]
    per_block = [block_activation_elements(block, dims.tp) for block in blocks] * in_flight
    if parallel.activation_checkpointing == "full":
        per_block = [model.dim / dims.tp] * len(per_block) + [max(per_block)]
    elif parallel.activation_checkpointing == "selective":  # every other block recomputed
        per_block = [e if i % 2 else model.dim / dims.tp for i, e in enumerate(per_block)] + [max(per_block)]
    if dims.cp > 1:  # each attention layer's gathered keys and values of the whole window
        kv = sum(2 * block.mixer.num_kv_heads * block.mixer.head_dim / dims.tp for block in blocks
                 if hasattr(block, "mixer") and hasattr(block.mixer, "num_kv_heads"))
        per_block.append(kv * dims.cp)
    # the fused loss keeps the hidden states' gradient and its fp32 weight gradient, and the hidden states with the
    # ignored rows zeroed; its workspace holds one chunk's logits (compute dtype) and logits and log-probabilities (fp32)
    vocab = model.vocab_size / dims.tp
    loss = 2 * tokens * model.dim * compute + vocab * model.dim * 4 + min(loss_chunk_tokens, tokens) * vocab * (compute + 8)
    activations = tokens * sum(per_block) * compute + (loss if heads else 0)
    return MemoryEstimate(layout=dims.describe(), tokens=tokens, params=round(held), weight_bytes=round(4 * held),
                          grad_bytes=round(4 * held), optimizer_bytes=round(8 * held), gathered_bytes=round(gathered),
                          activation_bytes=round(activations))
