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

Beyond one step (train/parallelize.py, train/checkpoint.py, the trainer's export):
- `grad_norm_and_clip`: the global gradient norm when gradients live on different meshes (dense ones
  on the dp mesh, experts on edp): each mesh's norm squared, the experts' also summed over the ep group
  (its ranks hold different experts), then clipping per mesh (DTensor ops refuse mixed meshes).
- `global_experts`: a local-expert parameter (FSDP's Shard(0) over edp) seen as a DTensor of ALL the
  layer's experts, [E, ...] sharded over the (ep, edp) mesh `expert_mesh` (ep outer, edp inner), with
  no copy. Checkpoints save that view, so an expert tensor has the same key and global shape as
  without EP; `.full_tensor()` of it gathers all experts (the final model export).
"""

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._functional_collectives import all_to_all_single_autograd
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Shard

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
    expert_mesh: DeviceMesh | None = None  # (ep, edp) over the same ranks: all experts of a layer, for checkpoints


# edp mesh -> ep group, for the gradient norm: ranks of an ep group hold different experts
_EP_GROUP_OF_EDP_MESH: dict = {}


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
    import deepspeed  # here, not at the top: importing it takes seconds, and runs without EP never need it
    from deepspeed.utils import groups

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
    # the same ranks as `mesh`, ep outer and edp inner: rank edp_i * ep + ep_j sits at [ep_j, edp_i]
    expert_mesh = DeviceMesh(device_type, torch.arange(world).view(world // ep_size, ep_size).T.contiguous(),
                             mesh_dim_names=("ep", "edp"))
    _EP_GROUP_OF_EDP_MESH[mesh["edp"]] = ep_group
    return ExpertParallel(ep_size, ep_group, edp_group, mesh["edp"], [m.experts for m in model.moe_layers()], names,
                          expert_mesh)


def shard_experts(ep: ExpertParallel, **fully_shard_kwargs) -> None:
    """fully_shard each layer's experts over the edp mesh with the world-size gradient divisor (a
    divisor other than the edp size is a PREMUL_SUM reduction on NCCL, a SUM and a division on gloo)."""
    for experts in ep.expert_modules:
        fully_shard(experts, mesh=ep.edp_mesh, **fully_shard_kwargs)
        experts.set_gradient_divide_factor(float(dist.get_world_size()))
        # gloo has no PREMUL_SUM: reduce with SUM, then divide. Not for one edp rank, where FSDP (torch
        # 2.13) skips the collective and would divide by the factor twice with forced sums.
        if ep.edp_mesh.device_type == "cpu" and ep.edp_mesh.size() > 1:
            experts.set_force_sum_reduction_for_comms(True)


def global_experts(local: DTensor, ep: ExpertParallel) -> DTensor:
    """A sharded local-expert tensor [E/ep, ...] (Shard(0) over edp) as a view of all E experts over
    (ep, edp): the same storage, so loading into the view loads the parameter (or optimizer state)."""
    if tuple(local.placements) != (Shard(0),):
        raise ValueError(f"expected expert shards Shard(0) over edp, got {local.placements}")
    shape = torch.Size((local.shape[0] * ep.ep_size, *local.shape[1:]))
    stride = tuple(int(torch.Size(shape[i + 1 :]).numel()) for i in range(len(shape)))
    return DTensor.from_local(local.to_local(), ep.expert_mesh, [Shard(0), Shard(0)], shape=shape, stride=stride)


@torch.no_grad()
def grad_norm_and_clip(grads: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Global L2 norm of gradients that may live on several meshes (dense on dp, experts on edp), and
    clipping to max_norm when > 0; one mesh (no expert parallelism) is the plain torch path."""
    by_mesh: dict = {}
    for g in grads:
        by_mesh.setdefault(g.device_mesh if isinstance(g, DTensor) else None, []).append(g)
    if len(by_mesh) <= 1:
        norm = torch.nn.utils.get_total_norm(grads, foreach=True)
        if isinstance(norm, DTensor):  # partial per-shard norms -> the full norm, reduced over the mesh
            norm = norm.full_tensor()
        groups_ = [grads]
    else:
        squares = []
        for mesh, group in by_mesh.items():
            part = torch.nn.utils.get_total_norm(group, foreach=True)
            part = (part.full_tensor() if isinstance(part, DTensor) else part).float().square()
            if mesh in _EP_GROUP_OF_EDP_MESH:  # this ep rank's experts only: add the other ep ranks'
                dist.all_reduce(part, group=_EP_GROUP_OF_EDP_MESH[mesh])
            squares.append(part)
        norm = torch.stack(squares).sum().sqrt()
        groups_ = list(by_mesh.values())
    if max_norm > 0:
        for group in groups_:
            torch.nn.utils.clip_grads_with_norm_(group, max_norm, norm, foreach=True)
    return norm
