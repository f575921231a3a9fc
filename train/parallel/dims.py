"""ParallelDims: the one object that owns every device mesh and process group of a run.

The world's ranks are laid out as a mesh of named dimensions, outermost first:

    dp_replicate   HSDP replicas (each a full copy, sharded over dp_shard); gradients all-reduced across
    dp_shard       FSDP2 shards of the parameters, gradients and optimizer state

`parallel.ep` (expert parallelism) adds no ranks: it is carved out of the data-parallel ranks, as in
torchtitan's ParallelDims. The dp ranks are regrouped as (edp, ep), ep innermost: an MoE layer's experts
are spread over the `ep` ranks of a group (all-to-all dispatch), and the `edp` ranks holding the same
experts shard them with FSDP. DeepSpeed's expert-parallel groups are the same ranks (checked), so its
MoE utilities can be used beside ours. A new dimension (tensor, context or pipeline parallelism) is a new
entry in `mesh_shape` and a new property here; nothing else in the project creates a mesh or a group.

    dims = ParallelDims.build(config.parallel, world)
    dims.dp_mesh          the FSDP mesh of the dense parameters (1-D dp_shard, or 2-D for HSDP)
    dims.edp_mesh         the FSDP mesh of the experts (ep > 1)
    dims.ep_group         the all-to-all group of the experts (ep > 1)
    dims.expert_mesh      (ep, edp) over the same ranks: all experts of a layer as one DTensor (checkpoints)
    dims.checkpoint_group a gloo group of all ranks for DCP, so async saves never interleave with training
"""

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from train.config import ParallelConfig
from train.model.config import ModelConfig
from train.parallel.world import World


@dataclass
class ParallelDims:
    dp_replicate: int
    dp_shard: int
    ep: int
    world_size: int
    device_type: str
    meshes: dict = field(default_factory=dict, repr=False)
    groups: dict = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, config: ParallelConfig, world: World, model: ModelConfig) -> "ParallelDims":
        replicate = config.dp_replicate
        shard = config.dp_shard if config.dp_shard > 0 else world.size // max(1, replicate)
        dims = cls(replicate, shard, config.ep, world.size, world.device.type)
        dims.validate()
        dims.check_model(model)
        dims.create()
        return dims

    @property
    def dp_size(self) -> int:
        return self.dp_replicate * self.dp_shard

    def validate(self) -> None:
        """Every size must divide out; the message names the keys and numbers."""
        if self.dp_replicate < 1 or self.dp_replicate * self.dp_shard != self.world_size:
            raise ValueError(f"parallel.dp_replicate={self.dp_replicate} x parallel.dp_shard={self.dp_shard} != world "
                             f"size {self.world_size}; set dp_shard=-1 to use the remaining ranks")
        if self.ep < 1 or self.dp_size % self.ep:
            raise ValueError(f"parallel.ep={self.ep} must be >= 1 and divide the data-parallel size {self.dp_size} "
                             f"(parallel.dp_replicate x parallel.dp_shard)")

    def check_model(self, model: ModelConfig) -> None:
        """What the model must allow for this layout, checked before any group is made."""
        if self.ep > 1:
            experts = [f.moe.num_experts for name, f in model.ffns.items() if f.kind == "moe"
                       and (name in model.layer_ffns or name == model.shortcut_moe)]
            if not experts:
                raise ValueError(f"parallel.ep={self.ep} needs a model with MoE layers; this model has none "
                                 "(use parallel.ep=1)")
            uneven = sorted({e for e in experts if e % self.ep})
            if uneven:
                raise ValueError(f"{uneven[0]} experts cannot be split over parallel.ep={self.ep} ranks; "
                                 f"use an ep that divides it")

    def create(self) -> None:
        world_mesh = init_device_mesh(self.device_type, (self.dp_replicate, self.dp_shard),
                                      mesh_dim_names=("dp_replicate", "dp_shard"))
        self.meshes["dp"] = world_mesh if self.dp_replicate > 1 else world_mesh["dp_shard"]
        if self.ep > 1:
            self.create_expert_parallel()
        self.groups["checkpoint"] = dist.new_group(backend="gloo")

    def create_expert_parallel(self) -> None:
        """The (edp, ep) mesh, DeepSpeed's groups over the same ranks, and the (ep, edp) view."""
        import deepspeed  # here, not at the top: importing it takes seconds, and runs without EP never need it
        from deepspeed.utils import groups

        deepspeed.init_distributed(dist_backend=dist.get_backend())
        groups._create_expert_and_data_parallel(expert_parallel_size_=self.ep)
        name = f"ep_size_{self.ep}"
        ds_groups = {"ep": groups._get_expert_parallel_group(name), "edp": groups._get_expert_data_parallel_group(name)}
        mesh = init_device_mesh(self.device_type, (self.world_size // self.ep, self.ep), mesh_dim_names=("edp", "ep"))
        for dim, group in ds_groups.items():
            if dist.get_process_group_ranks(mesh[dim].get_group()) != dist.get_process_group_ranks(group):
                raise RuntimeError(f"DeepSpeed's {dim} group {dist.get_process_group_ranks(group)} differs from the mesh's")
        self.meshes["edp"] = mesh["edp"]
        self.groups["ep"] = ds_groups["ep"]
        # the same ranks ep outer and edp inner: rank edp_i * ep + ep_j sits at [ep_j, edp_i]
        ranks = torch.arange(self.world_size).view(self.world_size // self.ep, self.ep).T.contiguous()
        self.meshes["expert"] = DeviceMesh(self.device_type, ranks, mesh_dim_names=("ep", "edp"))

    @property
    def dp_mesh(self) -> DeviceMesh:
        return self.meshes["dp"]

    @property
    def edp_mesh(self) -> Optional[DeviceMesh]:
        return self.meshes.get("edp")

    @property
    def expert_mesh(self) -> Optional[DeviceMesh]:
        return self.meshes.get("expert")

    @property
    def ep_group(self) -> Optional[dist.ProcessGroup]:
        return self.groups.get("ep")

    @property
    def checkpoint_group(self) -> dist.ProcessGroup:
        return self.groups["checkpoint"]

    def close(self) -> None:
        dist.destroy_process_group(self.groups.pop("checkpoint"))
