"""Helpers for training tests: run `python -m train` (or elastic torchrun) and read what it wrote."""

import json
import os
import subprocess
import sys
from pathlib import Path

from common.paths import REPO
from common.processes import free_port
from launch.local import torchrun_command

PATCHED = str(Path(__file__).parent / "train" / "patched_train.py")
# Small and fast: the tiny Llama on 64-token windows, a global batch of 8 sequences, fp32 so that runs
# on different numbers of ranks can be compared tightly.
FAST = ["model=llama3_tiny", "data.seq_len=64", "trainer.global_batch_size=8", "trainer.micro_batch_size=2",
        "trainer.log_every=1", "trainer.val_every=0", "trainer.val_samples=8", "parallel.param_dtype=fp32",
        "optim.warmup_steps=2", "checkpoint.mode=sync"]


def run_training(run_dir: Path, data: str, *overrides: str, nproc: int = 1, fault: str = "", max_restarts: int = 0,
                 check: bool = True) -> subprocess.CompletedProcess:
    """`python -m train` (one process) or elastic torchrun with `nproc` ranks; `fault` injects a failure."""
    args = [f"out_dir={run_dir.parent}", f"run_name={run_dir.name}", f"data.path={data}", *FAST, *overrides]
    # PYTHONPATH: the fault script runs from tests/train/, and must import this checkout, not an installed copy
    env = dict(os.environ, OMP_NUM_THREADS="1", FAULT=fault, PYTHONPATH=str(REPO))
    if nproc == 1 and not max_restarts:
        command = [sys.executable, PATCHED, *args]
    else:
        command = torchrun_command(nproc, max_restarts, "train", args, script=PATCHED)
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    if check and result.returncode != 0:
        raise AssertionError(f"training failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def metrics(run_dir: Path):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path):
    return {r["step"]: r["loss"] for r in metrics(run_dir) if "loss" in r}


def consumed_indices(run_dir: Path, last_step: int | None = None):
    """Every sample index any rank trained on (up to `last_step`), from trainer.record_samples."""
    found = []
    for path in sorted((run_dir / "samples").glob("rank_*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if last_step is None or record["step"] <= last_step:
                found.extend(record["indices"])
    return found


def wandb_records(run_file: Path):
    """Records of a W&B transaction log (run-*.wandb): LevelDB's log format, 32 KiB blocks, each
    record chunk = crc32 (4 bytes) + length (2, little endian) + type (1: full, 2: first, 3: middle,
    4: last), after a 7-byte header. wandb 0.31 ships no Python reader, so this is ours."""
    from wandb.proto import wandb_internal_pb2

    data, block, position, pending = run_file.read_bytes(), 32768, 7, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # the rest of a block too small for a chunk header is padding
            position += block - position % block
            continue
        length, kind = int.from_bytes(data[position + 4 : position + 6], "little"), data[position + 6]
        chunk, position = data[position + 7 : position + 7 + length], position + 7 + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def wandb_history(run_dir: Path):
    """(run id, logged steps) of every offline W&B run file under the run folder."""
    runs = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        run_id, steps = None, []
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run_id = record.run.run_id
            elif kind == "history":
                steps += [int(item.value_json) for item in record.history.item
                          if item.key == "_step" or list(item.nested_key) == ["_step"]]
        runs.append((run_id, steps))
    return runs


def spawn(worker, world: int, *args) -> None:
    """worker(rank, world, port, *args) on `world` spawned processes (a gloo group each sets up on `port`)."""
    import torch.multiprocessing as mp

    mp.start_processes(worker, args=(world, free_port(), *args), nprocs=world, start_method="spawn", join=True)


def full_gradient(name: str, grad, dims):
    """A parameter's whole gradient on this rank (gathered from its shards; all experts of an expert-parallel one)."""
    from torch.distributed.tensor import DTensor

    from train.parallel.expert import global_experts, is_expert_parameter

    if dims.ep > 1 and is_expert_parameter(name):
        grad = global_experts(grad, dims)
    return (grad.full_tensor() if isinstance(grad, DTensor) else grad).detach().clone()


def run_layouts(rank: int, world: int, port: int, runs, data: str, out: str, *overrides: str) -> None:
    """One spawned process of a layout test: sets up its rank's rendezvous, then trains each run (name, its
    overrides, the run whose step-5 checkpoint it resumes from or None) with the Trainer, one after another,
    and saves the first step's gradients of the parameters it holds, whole, as <run>/grads_<rank>.pt
    (`first_gradients` merges them). Leaves the process group up for the caller's own checks."""
    import shutil

    import torch
    import torch.distributed as dist

    from train.config import compose_train_config
    from train.trainer import Trainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    out = Path(out)
    for name, run_overrides, resume_from in runs:
        if resume_from is not None and rank == 0:
            source = out / resume_from / "checkpoints" / "step_00000005"
            shutil.copytree(source, out / name / "checkpoints" / source.name)
        if dist.is_initialized():
            dist.barrier()
        trainer = Trainer(compose_train_config([f"out_dir={out}", f"run_name={name}", f"data.path={data}", *FAST,
                                                *overrides, *run_overrides]))
        grads = {}

        def keep_first(optimizer, args, kwargs):  # after clipping, before the first step
            if not grads:
                grads.update({n: full_gradient(n, p.grad, trainer.dims) for n, p in trainer.model.named_parameters()})

        trainer.optimizer.register_step_pre_hook(keep_first)
        trainer.train()
        trainer.close()
        torch.save(grads, out / name / f"grads_{rank}.pt")


def first_gradients(run_dir: Path) -> dict:
    """A run_layouts run's first-step gradients of every parameter, from whichever rank held it."""
    import torch

    merged = {}
    for path in sorted(run_dir.glob("grads_*.pt")):
        merged.update(torch.load(path))
    return merged
