"""Expert parallelism (GShard, arXiv 2006.16668), composable with FSDP2: the experts of every MoE layer are
spread over the `ep` ranks of a group (train/parallel/dims.py owns the meshes and groups).

`apply_expert_parallel(model, dims)` runs on a plain model holding real weights, before `fully_shard`:
- each MoE layer keeps only its E / ep local experts (rank r of an ep group holds experts
  r*E/ep .. (r+1)*E/ep - 1) and dispatches with all-to-all, dropless: the per-expert counts are
  exchanged first (an equal-split all_to_all_single of [ep, E/ep] counts), then the token rows go
  through an uneven `all_to_all_single_autograd`, run through the local experts as one grouped matmul,
  and come back the same way. Choices of zero-computation experts were cut off before dispatch
  (train/model/moe/layer.py), so they never leave the rank. Tensors stay on the activations' device.
- `shard_experts` then shards each layer's experts over the edp mesh with the world-size gradient
  divisor: an expert's gradient on one rank already sums the contributions of its whole ep group's
  tokens (the all-to-all's backward brings them back), so summing over edp covers all ranks once, and
  dividing by the world size gives the same mean gradient as the dense parameters get.

Beyond one step:
- `global_experts`: a local-expert tensor (FSDP's Shard(0) over edp) seen as a DTensor of ALL the layer's
  experts, [E, ...] over the (ep, edp) expert mesh, with no copy. Checkpoints save that view, so an expert
  tensor has the same key and global shape as without EP; `gathered_experts` gathers all experts (export).
- the gradient norm over both meshes is train/parallel/grad_norm.py's.
"""

from typing import Dict

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._functional_collectives import all_to_all_single_autograd
from torch.distributed.checkpoint.state_dict import get_model_state_dict
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Shard

from train.model.moe.experts import RoutedExperts
from train.model.transformer import Transformer
from train.parallel.dims import ParallelDims


def is_expert_parameter(name: str) -> bool:
    """A routed-expert tensor ([E, ...], spread over ep), by its name in the model's state dict."""
    return ".experts." in name


class AllToAllDispatch:
    """Dropless all-to-all dispatch to the experts spread over `group` (a MoE layer's `dispatch`)."""

    def __init__(self, group: dist.ProcessGroup, ep_size: int):
        self.group, self.ep_size = group, ep_size

    def __call__(self, x_ND: torch.Tensor, counts_E: torch.Tensor, experts: RoutedExperts) -> torch.Tensor:
        ep, local = self.ep_size, experts.num_experts
        # rows are sorted by global expert, so they are grouped by destination rank already
        recv_counts_PL = torch.empty_like(counts_E)
        dist.all_to_all_single(recv_counts_PL, counts_E.contiguous(), group=self.group)
        recv_counts_PL = recv_counts_PL.view(ep, local)  # [source rank, local expert]
        # the all-to-all takes its split sizes on the host: one device->host read per layer and forward
        sizes = torch.cat([counts_E.view(ep, local).sum(dim=1), recv_counts_PL.flatten()]).tolist()
        send_splits, recv_counts = sizes[:ep], sizes[ep:]
        recv_splits = [sum(recv_counts[p * local : (p + 1) * local]) for p in range(ep)]
        x_RD = all_to_all_single_autograd(x_ND, recv_splits, send_splits, self.group)
        # received rows are (source, expert)-major; the experts want them (expert, source)-major
        chunks = torch.arange(sum(recv_splits), device=x_ND.device).split(recv_counts)
        order_R = torch.cat([chunks[p * local + e] for e in range(local) for p in range(ep)])
        y_RD = experts(x_RD.index_select(0, order_R), recv_counts_PL.sum(dim=0)).index_select(0, order_R.argsort())
        return all_to_all_single_autograd(y_RD, send_splits, recv_splits, self.group)


def apply_expert_parallel(model: Transformer, dims: ParallelDims) -> None:
    """Keep this rank's experts of every MoE layer and dispatch to the others by all-to-all."""
    if not model.moe_layers():
        raise ValueError(f"parallel.ep={dims.ep} needs a model with MoE layers; this model has none (use parallel.ep=1)")
    ep_rank = dist.get_rank(dims.ep_group)
    for moe in model.moe_layers():
        experts = moe.experts
        if experts.num_experts % dims.ep:
            raise ValueError(f"{experts.num_experts} experts cannot be split over parallel.ep={dims.ep} ranks")
        local = experts.num_experts // dims.ep
        for param_name, param in list(experts.named_parameters(recurse=False)):
            setattr(experts, param_name, nn.Parameter(param.detach()[ep_rank * local : (ep_rank + 1) * local].clone()))
        experts.num_experts = local
        moe.dispatch = AllToAllDispatch(dims.ep_group, dims.ep)


def shard_experts(model: Transformer, dims: ParallelDims, **fully_shard_kwargs) -> None:
    """fully_shard each layer's experts over the edp mesh with the world-size gradient divisor (a
    divisor other than the edp size is a PREMUL_SUM reduction on NCCL, a SUM and a division on gloo)."""
    for moe in model.moe_layers():
        fully_shard(moe.experts, mesh=dims.edp_mesh, **fully_shard_kwargs)
        moe.experts.set_gradient_divide_factor(float(dims.world_size))
        # gloo has no PREMUL_SUM: reduce with SUM, then divide. Not for one edp rank, where FSDP (torch
        # 2.13) skips the collective and would divide by the factor twice with forced sums.
        if dims.edp_mesh.device_type == "cpu" and dims.edp_mesh.size() > 1:
            moe.experts.set_force_sum_reduction_for_comms(True)


def global_experts(local: DTensor, dims: ParallelDims) -> DTensor:
    """A sharded local-expert tensor [E/ep, ...] (Shard(0) over edp) as a view of all E experts over
    (ep, edp): the same storage, so loading into the view loads the parameter (or optimizer state)."""
    if tuple(local.placements) != (Shard(0),):
        raise ValueError(f"expected expert shards Shard(0) over edp, got {local.placements}")
    shape = torch.Size((local.shape[0] * dims.ep, *local.shape[1:]))
    stride = tuple(int(torch.Size(shape[i + 1 :]).numel()) for i in range(len(shape)))
    return DTensor.from_local(local.to_local(), dims.expert_mesh, [Shard(0), Shard(0)], shape=shape, stride=stride)


def expert_views(state: Dict[str, object], dims: ParallelDims) -> Dict[str, object]:
    """A sharded model (or optimizer-state) dict with every expert tensor as `global_experts`' view."""
    return {k: global_experts(v, dims) if is_expert_parameter(k) and isinstance(v, DTensor) else v for k, v in state.items()}


def gathered_experts(model: nn.Module, dims: ParallelDims, keep: bool) -> Dict[str, torch.Tensor]:
    """With expert parallelism, every expert parameter with ALL its experts [E, ...] (gathered over edp
    and the ep group; a collective, every rank calls it), on CPU where `keep`, else {}. Without EP: {}."""
    if dims.ep == 1:
        return {}
    gathered = {}
    for name, tensor in get_model_state_dict(model).items():  # FSDP's sharded parameters, the local experts over edp
        if is_expert_parameter(name):
            full = global_experts(tensor, dims).full_tensor()
            if keep:
                gathered[name] = full.cpu()
    return gathered
