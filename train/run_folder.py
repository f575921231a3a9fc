"""The layout of a run folder (`out_dir/run_name`), shared by the trainer and the launchers. Imports no torch,
so launchers can read it cheaply.

    config.yaml          the resolved training config
    metrics.jsonl        one JSON record per logged step and per validation (rank 0)
    loss.png             its curves, drawn at the end (train/plots.py; `python -m launch.report run=<dir>` any time)
    checkpoints/step_N/  DCP step checkpoints (train/checkpoint.py); the latest complete one is resumed
    reference_logps.pt   DPO's reference log-probs of every pair, with dpo.precompute_reference (train/reference.py)
    model/               the final model folder (model.yaml + model.safetensors + tokenizer): the run is finished
    tokenizer/           SFT/DPO with a chat template: the tokenizer as trained with (its template, added tokens)
    tokenized/           SFT/DPO: the tokenized cache, one folder per fingerprint (data/chat/cache.py)
    stop                 written by a user or a batch script: finish the step, checkpoint, exit 0
    wandb_run_id         the W&B run id, fixed once, the same through restarts and requeues
"""

import uuid
from pathlib import Path

from common.atomic import create_once

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
LOSS_PLOT = "loss.png"
CHECKPOINTS = "checkpoints"
REFERENCE_LOGPS = "reference_logps.pt"
MODEL = "model"
TOKENIZER = "tokenizer"
TOKENIZED = "tokenized"
STOP = "stop"
WANDB_RUN_ID = "wandb_run_id"


def finished_marker(run_dir: Path) -> Path:
    """The trainer's last act is the final model folder, written atomically: its weights file marks the end."""
    return Path(run_dir) / MODEL / "model.safetensors"


def is_finished(run_dir: Path) -> bool:
    return finished_marker(run_dir).is_file()


def wandb_run_id(run_dir: Path) -> str:
    """One W&B run id per run folder, created once and reused by every restart and requeue."""
    return create_once(Path(run_dir) / WANDB_RUN_ID, lambda: uuid.uuid4().hex[:12])
