"""The process group and the device: who this process is among the ranks of a run.

Every run has a process group, also a single process (world size 1), so there is one code path
from a laptop to a cluster: `torchrun` sets RANK/WORLD_SIZE/MASTER_ADDR, a plain `python -m train`
gets a one-rank group on a free local port. The device comes from the config or the environment
(CUDA when available), never from a hard-coded string; CPU uses gloo, CUDA uses NCCL (with gloo
beside it for CPU tensors). Meshes and the other groups are train/parallel/dims.py's.

Under torchrun a worker dies with its agent (a watchdog on the agent's PID): an agent killed outright,
as when its node is lost, would otherwise leave its workers training on, into the run folder that a
rerun of the job now owns.

Two timeouts: `parallel.init_timeout_s` bounds the rendezvous and the start of the group (NCCL is
initialised eagerly, bound to this rank's GPU through `device_id`); `parallel.timeout_s` bounds each
collective afterwards. torch has no public setter for a group's timeout after creation, so
`set_collective_timeout` uses `distributed_c10d._set_pg_timeout` (torch >= 2.4), on every group that
exists when it is called.
"""

import os
import sys
import warnings
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from common.processes import exit_with_parent, free_port
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


def set_tf32(enabled: bool) -> None:
    """fp32 matmuls and convolutions on TF32 tensor cores (CUDA; ~8x the plain fp32 rate, 10-bit mantissa
    inputs). Through the legacy setters only: assigning the newer `fp32_precision = "tf32"` makes
    `torch.get_float32_matmul_precision()` raise, which Inductor's max-autotune calls."""
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    torch.backends.cudnn.allow_tf32 = enabled


def set_flush_denormal(enabled: bool) -> None:
    """Denormal floats (below 1.2e-38 in fp32 and bf16) computed as zero by CPU ops (x86 FTZ/DAZ bits of
    the floating-point control register; a no-op where the CPU has none). An x86 core takes a slow path
    for each denormal: on this project's 2-core Xeon a [256, 64, 64] batched matmul of denormal inputs took
    269 ms against 1.6 ms flushed, an elementwise multiply 189 against 41 ms. exp(log-decay sums) in the
    linear mixers' chunk masks and their gradients underflow into them: Qwen3-Next's intra-chunk matmuls
    took 108 ms of a 766 ms CPU step (bf16, 1 thread), and the whole step 564 ms flushed.
    The register is per thread and a new thread copies its creator's, so this must run before the
    first parallel op starts the OpenMP threads: `init_world` is the trainer's first torch work."""
    torch.set_flush_denormal(enabled)


def set_numerics(config: ParallelConfig, device: torch.device) -> None:
    """The process-wide numerics a run computes under: denormals flushed (parallel.flush_denormal) and, on
    CUDA, fp32 matmuls on TF32 (parallel.tf32). The benchmarks call it for their peers too."""
    set_flush_denormal(config.flush_denormal)
    if device.type == "cuda":
        set_tf32(config.tf32)


def set_determinism(enabled: bool) -> None:
    """Deterministic kernels (trainer.deterministic), for bit-exact restarts. Call before any CUDA work:
    cuBLAS reads CUBLAS_WORKSPACE_CONFIG when it creates its first handle, and without it
    torch.use_deterministic_algorithms makes every CUDA matmul raise. A value the user set is kept."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False  # autotuning may pick a different algorithm per run
    torch.backends.cudnn.deterministic = enabled
    torch.use_deterministic_algorithms(enabled)


def set_collective_timeout(config: ParallelConfig) -> None:
    """`parallel.timeout_s` on every process group that exists now: the default group after
    init_world, and again after ParallelDims.build for the groups of its meshes (created with
    torch's default timeout otherwise)."""
    timeout = timedelta(seconds=config.timeout_s)
    for group in list(dist.distributed_c10d._world.pg_map):
        dist.distributed_c10d._set_pg_timeout(timeout, group)


def restart_scoped_store(timeout: timedelta):
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
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timeout)
    return dist.PrefixStore(f"/worker/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def init_world(config: ParallelConfig) -> World:
    if "TORCHELASTIC_RUN_ID" in os.environ:  # under torchrun, whose agent is this process's parent
        exit_with_parent(os.getppid(), "training worker")
    if "RANK" not in os.environ:  # not under torchrun: a group of one
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    rank, local_rank, size = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    device = pick_device(config, local_rank)
    set_numerics(config, device)  # before any parallel op (set_flush_denormal)
    if not dist.is_initialized():
        if config.init_timeout_s <= 0 or config.timeout_s <= 0:
            raise ValueError(f"parallel.init_timeout_s={config.init_timeout_s}, parallel.timeout_s={config.timeout_s}: "
                             "both must be positive seconds")
        cuda = device.type == "cuda"
        if cuda:  # a failed or timed-out NCCL collective brings the process down instead of hanging it
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "3")
        init_timeout = timedelta(seconds=config.init_timeout_s)
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=init_timeout,
                                store=restart_scoped_store(init_timeout), rank=rank, world_size=size,
                                device_id=device if cuda else None)
        set_collective_timeout(config)
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
