"""Step checkpoints with torch.distributed.checkpoint (DCP): sharded, resharding on load, async.

A checkpoint is `run_dir/checkpoints/step_NNNNNNNN/` and holds named states:
- the sharded ones, "model" and "optim" (DCP files: each rank writes its shards, and any number of ranks
  can load them), and `.metadata`, which DCP writes last, through a temporary name and a rename, once
  every rank has finished: a checkpoint is complete exactly when `.metadata` exists;
- the replicated ones in `trainer.json` (rank 0): trainer progress, the data stream's position, the
  learning-rate schedule, and the world size it was saved with;
- `rng/rank_N.pt`: each rank's random-number-generator states.
A save cut off midway has no `.metadata` and is ignored (and removed at the next start); the latest
complete one is resumed. One that is complete but cannot be read (a truncated `.distcp`) is moved to
`checkpoints/unreadable/` and the one before it is resumed, with a warning. A save that cannot be
written (a full disk) stops the run with one line naming the folder; the previous checkpoint stays.
Saves run on their own gloo process group (ParallelDims.checkpoint_group), so async saves' collectives
never interleave with training's.

Async saves (checkpoint.mode=async: a thread writes; async_process: a saver process writes) copy the
state first ("staging") into host buffers that one DefaultStager keeps and reuses from save to save:
pinned memory and non-blocking copies on CUDA (plain memory on CPU), shared memory for the saver
process. Staging runs in the background too; only the next optimizer step, which changes the weights,
waits for it (`wait_for_staging`, an optimizer pre-step hook), and the next save waits for the write.
The saver process dies with its worker (`saver_main`): a worker killed outright never leaves it behind.

Expert parallelism (parallel.ep > 1): the ranks of an ep group hold different experts under the same
names, each [E/ep, ...]. DCP would take them for shards of one tensor, so the saved state sees each
expert parameter (and its AdamW moments) as the DTensor of ALL E experts over the (ep, edp) mesh
(train/parallel/expert.py: expert_views, no copy: loading into the view loads the parameter). The files
are then the same as without EP: same keys, same global shapes, and DCP reshards on load, so a
checkpoint resumes with the same or a different parallel.ep and world size (ep=1 included, both ways).

Pipeline parallelism (parallel.pp > 1): each rank's model holds its stages' parameters under the whole
model's names (train/parallel/pipeline.py), and the optimizer state is flat, keyed by those names, so the
files are again the same as one process's and resume under any other layout.
"""

import contextlib
import errno
import json
import multiprocessing
import random
import re
import shutil
import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import _async_process_executor as dcp_saver
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType, AsyncSaveResponse
from torch.distributed.checkpoint.stateful import Stateful
from torch.distributed.tensor import DTensor

from common.processes import exit_with_parent
from train.config import CheckpointConfig
from train.parallel.dims import ParallelDims
from train.parallel.expert import expert_views, global_experts, is_expert_parameter
from train.run_folder import CHECKPOINTS

MODES = {"sync": None, "async": AsyncCheckpointerType.THREAD, "async_process": AsyncCheckpointerType.PROCESS}
REPLICATED_FILE = "trainer.json"
UNREADABLE = "unreadable"  # checkpoints/unreadable/step_N: complete ones that could not be loaded, kept to inspect
DCP_SAVER_MAIN = dcp_saver._AsyncCheckpointProcess._checkpointing_subprocess
FLAT = StateDictOptions(flatten_optimizer_state_dict=True)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or read, in one line that names the folder and what to do."""


def saver_main(*args) -> None:
    """The saver process's entry under checkpoint.mode=async_process, in place of DCP's own: the same
    serving loop, but the process dies with its worker. DCP's saver is a spawned daemon that only stops
    when its worker asks or when its pipe closes while idle; a worker killed outright in the middle of a
    save (SIGKILL, the OOM killer) left it running, with its multiprocessing resource tracker: it finished
    the dead rank's save into a run folder the restarted workers now own, and both kept the job's output
    open. (Picklable by name: the spawned process imports this module to find it. A saver whose worker
    dies while it is still starting lives until its imports are done, then exits with nothing written.)"""
    exit_with_parent(multiprocessing.parent_process().pid, "checkpoint saver")
    DCP_SAVER_MAIN(*args)


def first_failure(error: BaseException) -> BaseException:
    """The underlying error of a DCP failure (DCP gathers every rank's into one CheckpointException)."""
    if isinstance(error, CheckpointException) and error.failures:
        return next(iter(error.failures.values()))[0]
    return error


def one_line(error: BaseException) -> str:
    error = first_failure(error)
    text = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return f"{type(error).__name__}: {text.strip().splitlines()[0] if text.strip() else ''}".rstrip(": ")


def is_complete(path: Path) -> bool:
    return (path / ".metadata").is_file() and (path / REPLICATED_FILE).is_file()


def step_dirs(root: Path):
    return sorted(root.glob("step_*"), key=lambda p: int(p.name.split("_")[1]))


def latest_complete(root: Path) -> Optional[Path]:
    complete = [p for p in step_dirs(root) if is_complete(p)]
    return complete[-1] if complete else None


class ModelState(Stateful):
    """The sharded model (FSDP2 DTensors), experts seen whole under expert parallelism."""

    def __init__(self, model: torch.nn.Module, dims: ParallelDims):
        self.model, self.dims, self.loaded = model, dims, None

    def state_dict(self):
        self.loaded = get_model_state_dict(self.model)  # DCP loads into these tensors (or their expert views)
        return expert_views(self.loaded, self.dims) if self.dims.ep > 1 else self.loaded

    def load_state_dict(self, state) -> None:
        set_model_state_dict(self.model, self.loaded)


class OptimizerState(Stateful):
    """The optimizer's sharded state (AdamW moments per parameter), expert moments seen whole under EP. Flat,
    keyed by parameter name (`state.<name>.exp_avg`, `param_groups.<name>.lr`): pipeline stages hold
    different parameters, and a nested state's lists of names per group would not reshard between layouts.
    Checkpoints written before the flat layout (`param_groups.<index>.lr`) are read nested, as they were
    written (`nested`, set by the checkpointer for one load); the next save is flat."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, dims: ParallelDims):
        self.model, self.optimizer, self.dims, self.loaded, self.nested = model, optimizer, dims, None, False

    def state_dict(self):
        self.loaded = get_optimizer_state_dict(self.model, self.optimizer, options=None if self.nested else FLAT)
        if self.dims.ep == 1:
            return self.loaded
        # the moments of an expert parameter (its name is in the key) as views of all experts, like the parameter
        if self.nested:
            return {**self.loaded, "state": {name: {k: global_experts(t, self.dims) if isinstance(t, DTensor) else t
                                                    for k, t in moments.items()} if is_expert_parameter(name) else moments
                                             for name, moments in self.loaded["state"].items()}}
        return expert_views(self.loaded, self.dims)

    def load_state_dict(self, state) -> None:
        # DCP loaded the tensors in place (expert views included) and put the loaded hyperparameters (lr, betas,
        # ...: not tensors) into `state`, which under EP is not `self.loaded` but its copy with the views
        if self.nested:
            set_optimizer_state_dict(self.model, self.optimizer, {**self.loaded, "param_groups": state["param_groups"]})
            self.nested = False
            return
        hyperparameters = {key: value for key, value in state.items() if not isinstance(value, torch.Tensor)}
        set_optimizer_state_dict(self.model, self.optimizer, {**self.loaded, **hyperparameters}, options=FLAT)

    def read_layout_of(self, path: Path, name: str) -> None:
        """Read the checkpoint at `path` (this state saved under `name`) nested if it was written so: its groups
        by index, each with its parameters' names (`param_groups.0.params`; a flat group never holds `params`)."""
        keys = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
        self.nested = any(re.fullmatch(rf"{re.escape(name)}\.param_groups\.\d+\.params", key) for key in keys)
        if self.nested and self.dims.pp > 1:
            raise CheckpointError(f"{path} holds the optimizer state by group (written before pipeline parallelism "
                                  "was added); resume it once without parallel.pp, then change the layout")


class RNGState(Stateful):
    """This rank's random-number generators (Python, NumPy, torch, CUDA)."""

    def state_dict(self):
        state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state) -> None:
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """Saves and loads the named states of a run: `sharded` through DCP, `replicated` (identical on every
    rank) as JSON by rank 0, and each rank's RNG."""

    def __init__(self, run_dir: Path, config: CheckpointConfig, rank: int, dims: ParallelDims,
                 sharded: Dict[str, Stateful], replicated: Dict[str, Stateful], device: torch.device):
        if config.mode not in MODES:
            raise ValueError(f"checkpoint.mode={config.mode!r}; use one of {', '.join(MODES)}")
        self.root, self.config, self.rank, self.world_size = run_dir / CHECKPOINTS, config, rank, dims.world_size
        self.group = dims.checkpoint_group
        self.sharded, self.replicated, self.rng = sharded, replicated, RNGState()
        self.stager = None
        if MODES[config.mode] == AsyncCheckpointerType.PROCESS:
            dcp_saver._AsyncCheckpointProcess._checkpointing_subprocess = staticmethod(saver_main)
        if MODES[config.mode] is not None:
            accelerated = device.type == "cuda"
            self.stager = DefaultStager(StagingOptions(
                use_pinned_memory=accelerated, use_shared_memory=MODES[config.mode] == AsyncCheckpointerType.PROCESS,
                use_async_staging=True, use_non_blocking_copy=accelerated))
        self.staging = None  # the Future of the last save's staging (the copy of the state)
        self.pending = None  # the Future of the last async save's write
        self.pending_path: Optional[Path] = None  # where it writes
        self.last_saved_step: Optional[int] = None
        self.blocked_seconds: list = []  # how long each save() and staging wait held training

    def remove_incomplete(self) -> None:
        """At start, before any save: leftovers of a cut-off save are deleted (rank 0), never resumed."""
        if self.rank == 0:
            for path in step_dirs(self.root):
                if not is_complete(path):
                    shutil.rmtree(path, ignore_errors=True)
        dist.barrier(group=self.group)

    def save(self, step: int) -> None:
        if self.last_saved_step == step:
            return
        started = time.perf_counter()
        self.wait()
        path = self.root / f"step_{step:08d}"
        with self.write_errors_name(path):
            if self.rank == 0:
                (path / "rng").mkdir(parents=True, exist_ok=True)
                replicated = {name: state.state_dict() for name, state in self.replicated.items()}
                (path / REPLICATED_FILE).write_text(json.dumps({**replicated, "world_size": self.world_size}, indent=2) + "\n")
            dist.barrier(group=self.group)
            torch.save(self.rng.state_dict(), path / "rng" / f"rank_{self.rank}.pt")
            kind = MODES[self.config.mode]
            if kind is None:
                dcp.save(self.sharded, checkpoint_id=str(path), process_group=self.group)
            else:
                response = dcp.async_save(self.sharded, checkpoint_id=str(path), process_group=self.group,
                                          async_checkpointer_type=kind, async_stager=self.stager)
                if isinstance(response, AsyncSaveResponse):
                    self.staging, self.pending = response.staging_completion, response.upload_completion
                else:  # staged already, synchronously
                    self.pending = response
                self.pending_path = path
        if kind is None:
            self.prune()
        self.last_saved_step = step
        self.blocked_seconds.append(time.perf_counter() - started)

    @contextlib.contextmanager
    def write_errors_name(self, path: Path):
        """A save that fails (a full disk, a read-only folder) raises one line naming its folder."""
        try:
            yield
        except (OSError, RuntimeError, CheckpointException) as error:  # torch.save's failed writes are RuntimeErrors
            last = latest_complete(self.root)
            free_mb = shutil.disk_usage(next(p for p in (path, *path.parents) if p.exists())).free / 1e6
            # torch.save reports a short write without its errno: an empty disk tells it apart
            full = free_mb < 1 or getattr(first_failure(error), "errno", None) == errno.ENOSPC
            raise CheckpointError(
                f"{path}: {f'no space left on the device ({free_mb:.1f} MB free)' if full else one_line(error)} "
                f"while saving this checkpoint; "
                f"{f'the last complete one, {last.name}, is intact' if last else 'there is no complete one yet'}: "
                f"{'make room' if full else 'fix this'} and rerun to resume") from None

    def wait_for_staging(self, *hook_args) -> None:
        """Block until the last save's copy of the state is taken (before anything changes the weights)."""
        if self.staging is not None:
            started = time.perf_counter()
            self.staging.result()
            self.staging = None
            self.blocked_seconds[-1] += time.perf_counter() - started

    def wait(self) -> None:
        """Block until the last async save is on disk, then drop checkpoints beyond `keep`."""
        if self.pending is None:
            return
        pending, self.pending = self.pending, None  # a failed write raises once
        with self.write_errors_name(self.pending_path):
            self.wait_for_staging()
            pending.result()
        self.prune()

    def prune(self) -> None:
        dist.barrier(group=self.group)  # every rank's save is complete before anything is deleted
        if self.rank == 0:
            complete = [p for p in step_dirs(self.root) if is_complete(p)]
            for old in complete[: -max(1, self.config.keep)]:
                shutil.rmtree(old, ignore_errors=True)

    def resume(self) -> Optional[Path]:
        """Load the latest complete checkpoint that can be read into the states (resharded to this world);
        its path, or None. Complete ones that cannot be read are moved to checkpoints/unreadable/ once an
        earlier one has loaded; if none can be read, the run stops."""
        self.remove_incomplete()
        if not self.config.resume:
            return None
        unreadable = []
        for path in reversed([p for p in step_dirs(self.root) if is_complete(p)]):
            error = self.load(path)
            if error is None:
                self.set_aside(unreadable)
                self.last_saved_step = int(path.name.split("_")[1])
                return path
            unreadable.append(path)
            if self.rank == 0:
                print(f"warning: checkpoint {path} cannot be read ({error}); trying the one before it", flush=True)
        if unreadable:
            raise CheckpointError(f"{self.root}: no complete checkpoint can be read ({', '.join(p.name for p in unreadable)}); "
                                  "move them away to start afresh, or set checkpoint.resume=false")
        return None

    def load(self, path: Path) -> Optional[str]:
        """Read `path` into the states; why any rank could not, or None (every rank gets the same answer)."""
        try:
            for name, state in self.sharded.items():
                if isinstance(state, OptimizerState):
                    state.read_layout_of(path, name)
            dcp.load(self.sharded, checkpoint_id=str(path), process_group=self.group)
            replicated = json.loads((path / REPLICATED_FILE).read_text())
            for name, state in self.replicated.items():
                state.load_state_dict(replicated[name])
            rng_file = path / "rng" / f"rank_{self.rank}.pt"
            if rng_file.is_file():  # absent when resuming on more ranks than saved
                self.rng.load_state_dict(torch.load(rng_file, weights_only=False))
            error = None
        except (Exception, CheckpointException) as failure:  # a failed load is retried with an earlier checkpoint
            error = one_line(failure)
        errors = [None] * dist.get_world_size(self.group)
        dist.all_gather_object(errors, error, group=self.group)
        return next((e for e in errors if e is not None), None)

    def set_aside(self, unreadable) -> None:
        if self.rank == 0 and unreadable:
            (self.root / UNREADABLE).mkdir(exist_ok=True)
            for path in unreadable:
                shutil.rmtree(self.root / UNREADABLE / path.name, ignore_errors=True)
                path.rename(self.root / UNREADABLE / path.name)
                print(f"warning: moved {path.name} to {self.root / UNREADABLE}", flush=True)
        dist.barrier(group=self.group)

    def close(self) -> None:
        self.wait()
        if self.stager is not None:
            self.stager.close()
        saver, dcp_saver._CHECKPOINT_PROCESS = dcp_saver._CHECKPOINT_PROCESS, None
        if saver is not None:  # asked to stop and joined now: a worker that ends with os._exit would not ask
            saver.__del__()
