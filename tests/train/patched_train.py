"""`python -m train` with an injected fault, for tests (never used in production runs).

FAULT="die:rank=R:step=S"  rank R calls os._exit(1) before optimizer step S, on the first attempt only
                           (torchrun's TORCHELASTIC_RESTART_COUNT == 0), as a crashed node would.
FAULT="nan:step=S"         the loss of the first attempt at step S is NaN on every rank.
FAULT="sleep:step=S"       every step from S on takes an extra second (room for a signal to arrive).
FAULT="slow_save:seconds=S"  on the first attempt, each rank's checkpoint write (in its writer thread or its
                           saver process) prints "writing checkpoint <folder>" and waits S seconds first.
FAULT="slow_load:seconds=S"  each checkpoint read prints "reading checkpoint <folder>" and waits S seconds.
The slow ones only open a window: the fault itself (a SIGKILL) comes from the test, outside the process.
This file is also the main module of a saver process (checkpoint.mode=async_process), which imports it.
"""

import os
import sys
import time

import torch
from torch.distributed.checkpoint.filesystem import FileSystemReader, _FileSystemWriter

from train.objectives import NextToken
from train.trainer import Trainer

fault = dict(part.split("=") for part in os.environ.get("FAULT", "").split(":")[1:])
kind = os.environ.get("FAULT", "").split(":")[0]
original_train_step, original_objective = Trainer.train_step, NextToken.__call__
original_write, original_read = _FileSystemWriter.write_data, FileSystemReader.read_data
first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
poisoned_steps, current = set(), {"step": 0}


def train_step(self, micro_batches, report):
    step = current["step"] = self.progress.step + 1
    if kind == "die" and step == int(fault["step"]) and self.world.rank == int(fault["rank"]) and first_attempt:
        print(f"rank {self.world.rank}: injected crash before step {step}", flush=True)
        os._exit(1)
    if kind == "sleep" and step >= int(fault["step"]):
        time.sleep(1.0)
    return original_train_step(self, micro_batches, report)


def objective(self, model, batch):
    loss, aux, stats = original_objective(self, model, batch)
    step = current["step"]
    if kind == "nan" and step == int(fault["step"]) and model.training and step not in poisoned_steps:
        loss = loss * torch.tensor(float("nan"))
        poisoned_steps.add(step)
    return loss, aux, stats


def write_data(self, plan, planner):
    if kind == "slow_save" and first_attempt:
        print(f"writing checkpoint {self.path}", flush=True)
        time.sleep(float(fault["seconds"]))
    return original_write(self, plan, planner)


def read_data(self, plan, planner):
    if kind == "slow_load":
        print(f"reading checkpoint {self.path}", flush=True)
        time.sleep(float(fault["seconds"]))
    return original_read(self, plan, planner)


Trainer.train_step, NextToken.__call__ = train_step, objective
_FileSystemWriter.write_data, FileSystemReader.read_data = write_data, read_data

if __name__ == "__main__":
    from train.__main__ import main

    sys.argv[0] = "train"
    main()
