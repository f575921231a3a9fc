"""Preemption signals and W&B runs that survive restarts (one process each). Non-finite losses and the
faults from outside are tests/faults/'s."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.train_helpers import FAST, PATCHED, losses, metrics, run_training, wandb_history

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGUSR1, marks=pytest.mark.heavy), pytest.param("stop file", marks=pytest.mark.heavy)])
def test_signal_checkpoints_and_exits_cleanly_then_resumes(prepared_data, tmp_path, sig):
    """A signal to the process, or the run folder's stop file (what a SLURM batch script writes)."""
    run_dir = tmp_path / "run"
    args = [f"out_dir={tmp_path}", "run_name=run", f"data.path={prepared_data}", *FAST, "trainer.max_steps=40",
            "checkpoint.every=100"]
    env = dict(os.environ, OMP_NUM_THREADS="1", FAULT="sleep:step=3")
    process = subprocess.Popen([sys.executable, PATCHED, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env)
    deadline = time.time() + 120
    while not ((run_dir / "metrics.jsonl").exists() and len(metrics(run_dir)) >= 3) and time.time() < deadline:
        time.sleep(0.2)
    if sig == "stop file":
        (run_dir / "stop").touch()
    else:
        process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    assert f"received {sig.name}" in stdout if sig != "stop file" else f"found {run_dir / 'stop'}" in stdout
    assert not (run_dir / "stop").exists()  # acted on once: the resumed run doesn't stop at once
    stopped = max(losses(run_dir))
    assert 3 <= stopped < 40 and f"stopped at step {stopped} on request; checkpoint saved" in stdout
    assert (run_dir / "checkpoints" / f"step_{stopped:08d}" / ".metadata").is_file()

    resumed = run_training(run_dir, prepared_data, "trainer.max_steps=40", "checkpoint.every=100")
    assert f"resumed from {run_dir / 'checkpoints' / f'step_{stopped:08d}'}" in resumed.stdout
    steps = [r["step"] for r in metrics(run_dir) if "loss" in r]
    assert steps == list(range(1, 41))  # no step repeated, none missing


def test_wandb_offline_history_and_same_run_after_restart(prepared_data, tmp_path):
    run_dir = tmp_path / "run"
    wandb = ["logging.wandb.mode=offline", "logging.wandb.group=pipeline-1", "checkpoint.every=3"]
    run_training(run_dir, prepared_data, "trainer.max_steps=3", *wandb)
    run_training(run_dir, prepared_data, "trainer.max_steps=6", *wandb)
    runs = wandb_history(run_dir)
    assert len(runs) == 2
    (first_id, first_steps), (second_id, second_steps) = runs
    assert first_id == second_id == (run_dir / "wandb_run_id").read_text().strip()
    assert first_steps == [1, 2, 3] and second_steps == [4, 5, 6]
