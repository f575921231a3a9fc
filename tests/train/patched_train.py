"""`python -m train` with an injected fault, for tests (never used in production runs).

FAULT="die:rank=R:step=S"  rank R calls os._exit(1) before optimizer step S, on the first attempt only
                           (torchrun's TORCHELASTIC_RESTART_COUNT == 0), as a crashed node would.
FAULT="nan:step=S"         the loss of the first attempt at step S is NaN on every rank.
FAULT="sleep:step=S"       every step from S on takes an extra second (room for a signal to arrive).
"""

import os
import sys
import time

import torch

from train.objectives import NextToken
from train.trainer import Trainer

fault = dict(part.split("=") for part in os.environ.get("FAULT", "").split(":")[1:])
kind = os.environ.get("FAULT", "").split(":")[0]
original_train_step, original_objective = Trainer.train_step, NextToken.__call__
poisoned_steps, current = set(), {"step": 0}


def train_step(self, micro_batches, report):
    step = current["step"] = self.progress.step + 1
    if kind == "die" and step == int(fault["step"]) and self.world.rank == int(fault["rank"]) \
            and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
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


Trainer.train_step, NextToken.__call__ = train_step, objective

if __name__ == "__main__":
    from train.__main__ import main

    sys.argv[0] = "train"
    main()
