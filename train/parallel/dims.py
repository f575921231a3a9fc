"""ParallelDims: the one object that owns every device mesh and process group of a run.

The world's ranks are laid out as one mesh of named dimensions, outermost first (torchtitan's order):

    pp             pipeline stages: the ranks the layers are split over (train/parallel/pipeline.py); outermost,
                   since stages exchange only activations, point to point
    dp_replicate   HSDP replicas (each a full copy, sharded over dp_shard); gradients all-reduced across
    dp_shard       FSDP2 shards of the parameters, gradients and optimizer state
    cp             context parallelism: the ranks one sequence is split over (train/parallel/context.py)
    tp             tensor + sequence parallelism: the ranks one layer's heads, hidden units and vocabulary
                   are split over (train/parallel/tensor.py); innermost, so its ranks are neighbours

world size = pp x dp_replicate x dp_shard x cp x tp. The data-parallel ranks (dp_replicate x dp_shard) read
different samples; the pp, cp and tp ranks of one data-parallel rank read the same ones. Every mesh but
`pp` lies within one pipeline stage. FSDP shards over (dp_shard, cp) flattened ("dp_shard_cp", as
torchtitan does): the cp ranks hold different tokens of the same samples, so their gradients are summed
like data-parallel ones.

`parallel.ep` (expert parallelism) adds no ranks: it is carved out of the data and context ranks, as in
torchtitan's ParallelDims. Those ranks are regrouped as (edp, ep), ep innermost: an MoE layer's experts
are spread over the `ep` ranks of a group (all-to-all dispatch), and the `edp` ranks holding the same
experts shard them with FSDP. DeepSpeed's expert-parallel groups are the same ranks (checked), so its
MoE utilities can be used beside ours. EP composes with dp and cp, not (yet) with tp or pp.

    dims = ParallelDims.build(config.parallel, world, config.model, config.data.seq_len, config.stage)
    dims.fsdp             whether FSDP2 wraps the model (more than one rank)
    dims.dp_mesh          the FSDP mesh of the dense parameters (1-D dp_shard_cp, or 2-D for HSDP)
    dims.dp_rank          this rank's index among the data-parallel ranks (which samples it reads)
    dims.tp_mesh, dims.cp_mesh, dims.pp_mesh   the tensor-, context- and pipeline-parallel meshes (size 1 when off)
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
from train.model.config import ModelConfig, ResidualConfig
from train.parallel.context import context_parallel_problems
from train.parallel.tensor import tensor_parallel_problems
from train.parallel.world import World

MESH_DIMS = ("pp", "dp_replicate", "dp_shard", "cp", "tp")


@dataclass
class ParallelDims:
    dp_replicate: int
    dp_shard: int
    ep: int
    world_size: int
    device_type: str
    tp: int = 1
    cp: int = 1
    pp: int = 1
    meshes: dict = field(default_factory=dict, repr=False)
    groups: dict = field(default_factory=dict, repr=False)

    @classmethod
    def resolve(cls, config: ParallelConfig, world_size: int, device_type: str = "cpu") -> "ParallelDims":
        """The sizes of `config` on `world_size` ranks (dp_shard=-1: the ranks left), validated; no mesh yet."""
        for key in ("dp_replicate", "ep", "tp", "cp", "pp"):
            if getattr(config, key) < 1:
                raise ValueError(f"parallel.{key}={getattr(config, key)} must be at least 1")
        others = config.dp_replicate * config.cp * config.tp * config.pp
        shard = config.dp_shard if config.dp_shard > 0 else world_size // others
        dims = cls(config.dp_replicate, shard, config.ep, world_size, device_type, tp=config.tp, cp=config.cp,
                   pp=config.pp)
        dims.validate()
        return dims

    @classmethod
    def build(cls, config: ParallelConfig, world: World, model: ModelConfig, seq_len: Optional[int] = None,
              stage: str = "pretrain") -> "ParallelDims":
        dims = cls.resolve(config, world.size, world.device.type)
        dims.check_model(model, seq_len, stage)
        dims.create()
        return dims

    @property
    def dp_size(self) -> int:
        """Data-parallel ranks: they read different samples (the global batch splits over them)."""
        return self.dp_replicate * self.dp_shard

    @property
    def grad_divisor(self) -> int:
        """What FSDP divides the summed gradients by: the ranks of its mesh, dp x cp."""
        return self.dp_size * self.cp

    @property
    def fsdp(self) -> bool:
        """Whether FSDP2 wraps the model (train/parallel/fsdp.py): on every layout of more than one rank. Over one
        data-parallel rank it shards nothing, but layouts of tp or pp ranks alone keep it: its mixed precision
        covers their DTensor parameters and pipeline stages (torchtitan turns mixed precision off there rather
        than autocast them). One process trains the plain model, in parallel.param_dtype under torch.autocast."""
        return self.world_size > 1

    @property
    def sample_copies(self) -> int:
        """Ranks that read each sample (its pp, cp and tp ranks): host counts summed over all ranks count it so often."""
        return self.pp * self.cp * self.tp

    @property
    def seq_len_divisor(self) -> int:
        """Sequences split into 2 x cp zig-zag chunks, each rank's tokens into tp sequence-parallel shards."""
        return (2 * self.cp if self.cp > 1 else 1) * self.tp

    def validate(self) -> None:
        """Every size must divide out; the message names the keys and numbers."""
        named = {"pp": self.pp, "dp_replicate": self.dp_replicate, "dp_shard": self.dp_shard, "cp": self.cp, "tp": self.tp}
        sizes = " x ".join(f"parallel.{k}={v}" for k, v in named.items() if v > 1 or k.startswith("dp"))
        if self.dp_shard < 1 or self.pp * self.dp_replicate * self.dp_shard * self.cp * self.tp != self.world_size:
            raise ValueError(f"{sizes} != world size {self.world_size}; the product must equal the number of "
                             "processes (dp_shard=-1 takes the ranks left)")
        if self.ep > 1 and self.tp > 1:
            raise ValueError(f"parallel.ep={self.ep} with parallel.tp={self.tp}: expert parallelism composes with the "
                             "data and context ranks only; use tp=1 (experts replicated within TP need ep=1)")
        if self.ep > 1 and self.pp > 1:
            raise ValueError(f"parallel.ep={self.ep} with parallel.pp={self.pp}: expert parallelism does not compose "
                             "with pipeline stages yet (its groups span the whole world); use ep=1 or pp=1")
        if self.ep > 1 and self.grad_divisor % self.ep:
            raise ValueError(f"parallel.ep={self.ep} must be >= 1 and divide the data-parallel size {self.grad_divisor} "
                             f"(parallel.dp_replicate x parallel.dp_shard x parallel.cp)")

    def check_model(self, model: ModelConfig, seq_len: Optional[int] = None, stage: str = "pretrain") -> None:
        """What the model, the sequence length and the stage must allow for this layout, checked before any
        group is made."""
        if stage == "dpo" and self.tp * self.cp > 1:
            raise ValueError(f"stage=dpo with parallel.tp={self.tp}, parallel.cp={self.cp}: tensor and context "
                             "parallelism cover the next-token stages (pretrain, midtrain, sft); use tp=cp=1 for DPO")
        if self.tp * self.cp > 1:  # the TP plans and CP shards know the standard block and one-token targets
            if model.mtp.depth or model.residual != ResidualConfig():
                raise ValueError(f"model.mtp and model.residual (hyper-connections, parallel blocks, value residual, "
                                 f"branch scales) are not supported with parallel.tp={self.tp}, parallel.cp={self.cp} "
                                 "yet; use tp=cp=1 for them")
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
        problems = (tensor_parallel_problems(model, self.tp) if self.tp > 1 else []) + \
                   (context_parallel_problems(model, self.cp) if self.cp > 1 else [])
        if problems:
            raise ValueError(problems[0])
        if seq_len is not None and seq_len % self.seq_len_divisor:
            raise ValueError(f"data.seq_len={seq_len} must be a multiple of {self.seq_len_divisor} for parallel.cp="
                             f"{self.cp} (2 x cp zig-zag chunks) and parallel.tp={self.tp} (sequence-parallel shards)")

    def create(self) -> None:
        shape = (self.pp, self.dp_replicate, self.dp_shard, self.cp, self.tp)
        world_mesh = init_device_mesh(self.device_type, shape, mesh_dim_names=MESH_DIMS)
        shard_cp = world_mesh["dp_shard", "cp"]._flatten("dp_shard_cp")
        self.meshes["dp"] = world_mesh["dp_replicate", "dp_shard_cp"] if self.dp_replicate > 1 else shard_cp
        self.meshes["batch"] = world_mesh["dp_replicate", "dp_shard"]._flatten("batch")
        self.meshes["tp"], self.meshes["cp"], self.meshes["pp"] = world_mesh["tp"], world_mesh["cp"], world_mesh["pp"]
        if self.ep > 1:
            self.create_expert_parallel()
        self.groups["checkpoint"] = dist.new_group(backend="gloo")

    def create_expert_parallel(self) -> None:
        """The (edp, ep) mesh, DeepSpeed's groups over the same ranks, and the (ep, edp) view. Without tp the
        world's ranks are (dp, cp)-major, so consecutive ranks (DeepSpeed's ep groups) are dp x cp ranks."""
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
    def dp_rank(self) -> int:
        """Which share of each global batch this rank reads (its cp and tp ranks read the same)."""
        return self.meshes["batch"].get_local_rank()

    @property
    def dp_leader(self) -> bool:
        """True on one rank of the pp x cp x tp ranks that read the same samples (the one that records them)."""
        return self.tp_mesh.get_local_rank() == 0 and self.cp_mesh.get_local_rank() == 0 and self.pp_rank == 0

    @property
    def tp_mesh(self) -> DeviceMesh:
        return self.meshes["tp"]

    @property
    def cp_mesh(self) -> DeviceMesh:
        return self.meshes["cp"]

    @property
    def pp_mesh(self) -> DeviceMesh:
        return self.meshes["pp"]

    @property
    def pp_rank(self) -> int:
        """Which pipeline stage(s) this rank runs (train/parallel/pipeline.py)."""
        return self.pp_mesh.get_local_rank()

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

    def describe(self) -> str:
        """The layout in one line, e.g. `4 ranks: dp_shard 2 x tp 2`."""
        sizes = {"pp": self.pp, "dp_replicate": self.dp_replicate, "dp_shard": self.dp_shard, "cp": self.cp, "tp": self.tp}
        used = [f"{k} {v}" for k, v in sizes.items() if v > 1] or ["not sharded"]
        return f"{self.world_size} rank(s): {' x '.join(used)}" + (f", ep {self.ep}" if self.ep > 1 else "")

    def close(self) -> None:
        dist.destroy_process_group(self.groups.pop("checkpoint"))
