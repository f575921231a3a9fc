"""Expert parallelism (GShard, arXiv 2006.16668) with DeepSpeed's process groups, composable with FSDP2.

`apply_expert_parallel(model, ep_size)` is applied to a plain model after `dist.init_process_group`
and before `fully_shard`:
- DeepSpeed creates the expert-parallel groups (ep consecutive ranks: [0,1], [2,3], ...) and the
  expert-data-parallel groups (ranks holding the same experts: [0,2], [1,3], ...)
  (`deepspeed.utils.groups._create_expert_and_data_parallel`); the same layout as
  `init_device_mesh(device, (world // ep, ep), mesh_dim_names=("edp", "ep"))`, which is checked.
- Each MoE layer keeps only its E / ep local experts (rank r of an ep group holds experts
  r*E/ep .. (r+1)*E/ep - 1) and dispatches with all-to-all, dropless: the per-expert counts are
  exchanged first (an equal-split all_to_all_single of [ep, E/ep] counts), then the token rows go
  through an uneven `all_to_all_single_autograd` (DeepSpeed's `_AllToAll` takes equal splits only),
  run through the local experts as one grouped matmul, and come back the same way. Choices of
  zero-computation experts were cut off before dispatch (train/model/moe/layer.py), so they never
  leave the rank. Works on CPU+gloo and CUDA+NCCL: tensors stay on the device of the activations.

Sharding (what the trainer does next, `shard_experts` below does the first two lines):
    fully_shard(moe.experts, mesh=ep.edp_mesh, ...)           # every MoE layer's experts, over edp only
    moe.experts.set_gradient_divide_factor(world_size)       # see below
    fully_shard(block, mesh=dp_mesh, ...); fully_shard(model, mesh=dp_mesh, ...)   # dense, as before
An expert's gradient on one rank already sums the contributions of the tokens of its whole ep group
(the all-to-all's backward brings them back), so summing over edp covers all world ranks once:
dividing by the world size (not by the edp size, FSDP's default) gives the same mean gradient as the
dense parameters get. `expert_parameter_names` lists the expert parameters (reduced over edp only).
"""

from dataclasses import dataclass

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.utils import groups
from torch import nn
from torch.distributed._functional_collectives import all_to_all_single_autograd
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard

from train.model.moe.experts import RoutedExperts
from train.model.transformer import Transformer


@dataclass
class ExpertParallel:
    ep_size: int
    ep_group: dist.ProcessGroup  # DeepSpeed's expert-parallel group of this rank (the all-to-all)
    edp_group: dist.ProcessGroup  # DeepSpeed's expert-data-parallel group (replicas of the same experts)
    edp_mesh: DeviceMesh  # mesh["edp"] of the (edp, ep) mesh: the FSDP mesh of the expert parameters
    expert_modules: list[RoutedExperts]  # one per MoE layer: fully_shard each over edp_mesh
    expert_parameter_names: list[str]  # names in model.named_parameters() before sharding


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
        send_splits = counts_E.view(ep, local).sum(dim=1).tolist()
        recv_splits = recv_counts_PL.sum(dim=1).tolist()
        x_RD = all_to_all_single_autograd(x_ND, recv_splits, send_splits, self.group)
        # received rows are (source, expert)-major; the experts want them (expert, source)-major
        chunks = torch.arange(sum(recv_splits), device=x_ND.device).split(recv_counts_PL.flatten().tolist())
        order_R = torch.cat([chunks[p * local + e] for e in range(local) for p in range(ep)])
        y_RD = experts(x_RD[order_R], recv_counts_PL.sum(dim=0))[order_R.argsort()]
        return all_to_all_single_autograd(y_RD, send_splits, recv_splits, self.group)


def apply_expert_parallel(model: Transformer, ep_size: int, device_type: str | None = None) -> ExpertParallel:
    """Spread every MoE layer's experts over `ep_size` ranks (see the module docstring).
    `device_type` of the mesh: default cuda under NCCL, else cpu."""
    world = dist.get_world_size()
    if world % ep_size:
        raise ValueError(f"parallel.ep={ep_size} must divide the world size {world}")
    backend = dist.get_backend()
    device_type = device_type or ("cuda" if backend == "nccl" else "cpu")
    deepspeed.init_distributed(dist_backend=backend)
    groups._create_expert_and_data_parallel(expert_parallel_size_=ep_size)
    name = f"ep_size_{ep_size}"
    ep_group, edp_group = groups._get_expert_parallel_group(name), groups._get_expert_data_parallel_group(name)
    mesh = init_device_mesh(device_type, (world // ep_size, ep_size), mesh_dim_names=("edp", "ep"))
    for dim, group in (("ep", ep_group), ("edp", edp_group)):
        if dist.get_process_group_ranks(mesh[dim].get_group()) != dist.get_process_group_ranks(group):
            raise RuntimeError(f"DeepSpeed's {dim} group {dist.get_process_group_ranks(group)} differs from the mesh's")
    names = [n for n, p in model.named_parameters() if ".experts." in n]
    ep_rank = dist.get_rank(ep_group)
    for moe in model.moe_layers():
        experts = moe.experts
        if experts.num_experts % ep_size:
            raise ValueError(f"{experts.num_experts} experts cannot be split over ep={ep_size} ranks")
        local = experts.num_experts // ep_size
        for param_name, param in list(experts.named_parameters(recurse=False)):
            setattr(experts, param_name, nn.Parameter(param.detach()[ep_rank * local : (ep_rank + 1) * local].clone()))
        experts.num_experts = local
        moe.dispatch = AllToAllDispatch(ep_group, ep_size)
    return ExpertParallel(ep_size, ep_group, edp_group, mesh["edp"], [m.experts for m in model.moe_layers()], names)


def shard_experts(ep: ExpertParallel, **fully_shard_kwargs) -> None:
    """fully_shard each layer's experts over the edp mesh with the world-size gradient divisor."""
    for experts in ep.expert_modules:
        fully_shard(experts, mesh=ep.edp_mesh, **fully_shard_kwargs)
        experts.set_gradient_divide_factor(float(dist.get_world_size()))
