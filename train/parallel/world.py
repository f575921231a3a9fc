"""The process group and the device: who this process is among the ranks of a run.

Every run has a process group, also a single process (world size 1), so there is one code path
from a laptop to a cluster: `torchrun` sets RANK/WORLD_SIZE/MASTER_ADDR, a plain `python -m train`
gets a one-rank group on a free local port. The device comes from the config or the environment
(CUDA when available), never from a hard-coded string; CPU uses gloo, CUDA uses NCCL (with gloo
beside it for CPU tensors). Meshes and the other groups are train/parallel/dims.py's.
"""

import os
import sys
import warnings
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from common.processes import free_port
from train.config import ParallelConfig


@dataclass
class World:
    rank: int
    local_rank: int
    size: int
    device: torch.device

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


TIMEOUT = timedelta(minutes=10)


def restart_scoped_store():
    """The rendezvous store, with keys scoped to this restart of the workers (TORCHELASTIC_RESTART_COUNT):
    torchrun keeps its agent's store across elastic restarts without prefixing the workers' keys, so
    restarted workers would read the dead ones' addresses. Multi-node launchers set
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 instead (each attempt's rank 0 hosts a fresh store); see
    docs/notes.md, "Elastic restarts and the rendezvous store"."""
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
    return World(rank, local_rank, size, device)


def close_world() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def exit_world() -> None:
    """The end of a run that finished: every rank meets at a barrier, then a run of several processes
    exits at once (os._exit(0)), skipping torch's C++ teardown, which can abort once the store's host
    is gone (docs/notes.md, "Exiting a finished multi-node run"). Nothing is left to tear down by then:
    checkpoints are written and W&B is finished."""
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
