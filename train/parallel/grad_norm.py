"""The global gradient norm and its clipping, over every shard of every rank.

Without expert parallelism every gradient is a DTensor on the data-parallel mesh and torch computes the
norm. With it, dense gradients live on the dp mesh and expert gradients on the edp mesh (DTensor ops
refuse mixed meshes): each mesh's norm squared is computed apart, the experts' also summed over the ep
group (its ranks hold different experts), and the clipping is applied per mesh with the one global norm.
With pipeline parallelism each rank's gradients are its stages' (train/parallel/pipeline.py): the stages'
squared norms are summed over the pp group.
"""

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from train.parallel.dims import ParallelDims


@torch.no_grad()
def clip_grad_norm(parameters, max_norm: float, dims: ParallelDims) -> torch.Tensor:
    """The global L2 norm of the parameters' gradients (a 0-dim tensor), clipped to max_norm when > 0."""
    grads = [p.grad for p in parameters if p.grad is not None]
    by_mesh: dict = {}
    for g in grads:
        by_mesh.setdefault(g.device_mesh if isinstance(g, DTensor) else None, []).append(g)
    if len(by_mesh) <= 1:
        norm = torch.nn.utils.get_total_norm(grads, foreach=True)
        if isinstance(norm, DTensor):  # partial per-shard norms -> the full norm, reduced over the mesh
            norm = norm.full_tensor()
        groups = [grads]
    else:
        squares = []
        for mesh, group in by_mesh.items():
            part = torch.nn.utils.get_total_norm(group, foreach=True)
            part = (part.full_tensor() if isinstance(part, DTensor) else part).float().square()
            if mesh == dims.edp_mesh:  # this ep rank's experts only: add the other ep ranks'
                dist.all_reduce(part, group=dims.ep_group)
            squares.append(part)
        norm = torch.stack(squares).sum().sqrt()
        groups = list(by_mesh.values())
    if dims.pp > 1:  # each stage's layers on their own ranks: the stages' squares add up
        squared = norm.float().square()
        dist.all_reduce(squared, group=dims.pp_mesh.get_group())
        norm = squared.sqrt()
    if max_norm > 0:
        for group in groups:
            torch.nn.utils.clip_grads_with_norm_(group, max_norm, norm, foreach=True)
    return norm
