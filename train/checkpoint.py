"""Distributed checkpoints with torch.distributed.checkpoint (DCP): sharded, resharding on load, async.

A checkpoint is `run_dir/checkpoints/step_NNNNNNNN/`:
- DCP files of the model and optimizer (each rank writes its shards; a different number of ranks can
  load them), and `.metadata`, which DCP writes last, through a temporary name and a rename, once
  every rank has finished: a checkpoint is complete exactly when `.metadata` exists;
- `trainer.json`: step, tokens seen, samples consumed, scheduler state, W&B run id;
- `rng/rank_N.pt`: each rank's random-number-generator states.
A save cut off midway has no `.metadata` and is ignored (and removed at the next start); the latest
complete one is resumed. Async saves run on their own gloo process group, so their collectives never
interleave with training's.

Expert parallelism (parallel.ep > 1): the ranks of an ep group hold different experts under the same
names, each [E/ep, ...]. DCP would take them for shards of one tensor, so the saved state sees each
expert parameter (and its AdamW moments) as the DTensor of ALL E experts over the (ep, edp) mesh
(train/expert_parallel.global_experts, a view: loading into it loads the parameter). The files are
then the same as without EP: same keys, same global shapes, and DCP reshards on load, so a checkpoint
resumes with the same or a different parallel.ep and world size (ep=1 included, both ways).
"""

import json
import random
import shutil
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType
from torch.distributed.tensor import DTensor

from train.config import CheckpointConfig
from train.expert_parallel import global_experts

MODES = {"sync": None, "async": AsyncCheckpointerType.THREAD, "async_process": AsyncCheckpointerType.PROCESS}


def is_complete(path: Path) -> bool:
    return (path / ".metadata").is_file() and (path / "trainer.json").is_file()


def step_dirs(root: Path):
    return sorted(root.glob("step_*"), key=lambda p: int(p.name.split("_")[1]))


def latest_complete(root: Path) -> Optional[Path]:
    complete = [p for p in step_dirs(root) if is_complete(p)]
    return complete[-1] if complete else None


def rng_state() -> Dict[str, object]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, object]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    def __init__(self, run_dir: Path, config: CheckpointConfig, rank: int):
        if config.mode not in MODES:
            raise ValueError(f"checkpoint.mode={config.mode!r}; use one of {', '.join(MODES)}")
        self.root, self.config, self.rank = run_dir / "checkpoints", config, rank
        self.group = dist.new_group(backend="gloo")  # for DCP's own collectives (async ones run in the background)
        self.pending = None  # the Future of the last async save
        self.last_saved_step: Optional[int] = None
        self.blocked_seconds: list = []  # how long each save() held training, for the benchmark

    def remove_incomplete(self) -> None:
        """At start, before any save: leftovers of a cut-off save are deleted (rank 0), never resumed."""
        if self.rank == 0:
            for path in step_dirs(self.root):
                if not is_complete(path):
                    shutil.rmtree(path, ignore_errors=True)
        dist.barrier(group=self.group)

    def state(self, model, optimizer) -> Dict[str, object]:
        model_state, optim_state = get_state_dict(model, optimizer)
        return {"model": model_state, "optim": optim_state}

    @staticmethod
    def saved_view(state: Dict[str, object], model) -> Dict[str, object]:
        """What DCP reads and writes: `state`, with the expert tensors of expert parallelism as views
        of all experts (the module docstring); `state` itself without EP."""
        ep = getattr(model, "expert_parallel", None)
        if ep is None:
            return state
        names = set(ep.expert_parameter_names)
        model_state = {k: global_experts(v, ep) if k in names else v for k, v in state["model"].items()}
        optim = dict(state["optim"])
        optim["state"] = {k: ({n: global_experts(t, ep) if isinstance(t, DTensor) else t for n, t in v.items()}
                              if k in names else v) for k, v in optim["state"].items()}
        return {**state, "model": model_state, "optim": optim}

    def save(self, step: int, model, optimizer, trainer_state: Dict[str, object]) -> None:
        import time

        started = time.perf_counter()
        self.wait()
        path = self.root / f"step_{step:08d}"
        if self.rank == 0:
            (path / "rng").mkdir(parents=True, exist_ok=True)
            (path / "trainer.json").write_text(json.dumps(trainer_state, indent=2) + "\n")
        dist.barrier(group=self.group)
        torch.save(rng_state(), path / "rng" / f"rank_{self.rank}.pt")
        state = self.saved_view(self.state(model, optimizer), model)
        kind = MODES[self.config.mode]
        if kind is None:
            dcp.save(state, checkpoint_id=str(path), process_group=self.group)
            self.prune()
        else:
            self.pending = dcp.async_save(state, checkpoint_id=str(path), process_group=self.group,
                                          async_checkpointer_type=kind)
        self.last_saved_step = step
        self.blocked_seconds.append(time.perf_counter() - started)

    def wait(self) -> None:
        """Block until the last async save is on disk, then drop checkpoints beyond `keep`."""
        if self.pending is not None:
            self.pending.result()
            self.pending = None
            self.prune()

    def prune(self) -> None:
        dist.barrier(group=self.group)  # every rank's save is complete before anything is deleted
        if self.rank == 0:
            complete = [p for p in step_dirs(self.root) if is_complete(p)]
            for old in complete[: -max(1, self.config.keep)]:
                shutil.rmtree(old, ignore_errors=True)

    def load(self, path: Path, model, optimizer) -> Dict[str, object]:
        """Load model and optimizer (resharded to this world) in place; returns the trainer state."""
        state = self.state(model, optimizer)
        dcp.load(self.saved_view(state, model), checkpoint_id=str(path), process_group=self.group)  # into `state`
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        rng_file = path / "rng" / f"rank_{self.rank}.pt"
        if rng_file.is_file():  # absent when resuming on more ranks than saved
            set_rng_state(torch.load(rng_file, weights_only=False))
        return json.loads((path / "trainer.json").read_text())

    def close(self) -> None:
        self.wait()
        dist.destroy_process_group(self.group)
