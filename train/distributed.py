"""Process group, device and device mesh: the one place that knows about ranks.

Every run has a process group, also a single process (world size 1), so there is one code path
from a laptop to a cluster: `torchrun` sets RANK/WORLD_SIZE/MASTER_ADDR, a plain `python -m train`
gets a one-rank group on a free local port. The device comes from the config or the environment
(CUDA when available), never from a hard-coded string; CPU uses gloo, CUDA uses NCCL (with gloo
beside it for CPU tensors).
"""

import os
import socket
import sys
import warnings
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from train.config import ParallelConfig


@dataclass
class World:
    rank: int
    local_rank: int
    size: int
    device: torch.device
    mesh: DeviceMesh  # 2-D ("dp_replicate", "dp_shard") data-parallel mesh

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(config: ParallelConfig, local_rank: int) -> torch.device:
    kind = config.device
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(kind)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TIMEOUT = timedelta(minutes=10)


def restart_scoped_store():
    """The rendezvous store, with keys scoped to this restart of the workers.

    torchrun shares its agent's TCPStore with the workers and keeps it across elastic restarts, but
    the workers' keys are not prefixed by attempt: restarted workers then read the dead workers'
    gloo addresses and fail to connect or hang in `new_group` (seen with torch 2.13 on gloo). A
    prefix per restart (TORCHELASTIC_RESTART_COUNT) keeps every attempt's keys apart.
    Across nodes that count can differ (only the agent whose worker failed counts a restart), so
    multi-node launchers (slurm/job.sbatch.j2) set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 instead: each
    attempt's rank 0 then hosts a fresh store, and this function is not used.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None  # plain env:// initialisation
    if int(os.environ.get("GROUP_WORLD_SIZE", 1)) > 1 and os.environ.get("RANK") == "0":
        warnings.warn("several torchrun nodes share the agent's store: elastic restarts may hang; "
                      "set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 for torchrun (as slurm/job.sbatch.j2 does)")
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=TIMEOUT)
    return dist.PrefixStore(f"/worker/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def init_world(config: ParallelConfig) -> World:
    if "RANK" not in os.environ:  # not under torchrun: a group of one
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    rank, local_rank, size = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    device = pick_device(config, local_rank)
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=TIMEOUT, store=restart_scoped_store(), rank=rank, world_size=size)
    replicate = config.dp_replicate
    shard = config.dp_shard if config.dp_shard > 0 else size // replicate
    if replicate * shard != size:
        raise ValueError(
            f"parallel.dp_replicate={replicate} x parallel.dp_shard={shard} != world size {size}; "
            "set dp_shard=-1 to use the remaining ranks"
        )
    mesh = init_device_mesh(device.type, (replicate, shard), mesh_dim_names=("dp_replicate", "dp_shard"))
    return World(rank, local_rank, size, device, mesh)


def close_world() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def exit_world() -> None:
    """The end of a run that finished: every rank meets at a barrier, then a run of several processes
    exits at once (os._exit(0)), skipping torch's C++ teardown. With each attempt's store hosted by rank 0
    (multi-node, TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1), a rank still tearing down after rank 0 has gone
    sometimes aborted ("terminate called without an active exception", exit -6; once, in CI, among some 30
    two-node runs on the test cluster), and torchrun then restarted a finished job on one node while the other waited
    at its exit barrier. Nothing is left to tear down: checkpoints are written and W&B is finished."""
    if not dist.is_initialized():
        return
    several = dist.get_world_size() > 1
    dist.barrier()
    if not several:
        dist.destroy_process_group()
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum over all ranks (a copy; the input is left alone)."""
    value = value.clone()
    dist.all_reduce(value)
    return value
