"""Preemption signals, non-finite losses, and W&B runs that survive restarts (one process each)."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.train_helpers import FAST, PATCHED, losses, metrics, run_training, wandb_history

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, "stop file"])
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


@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_non_finite_loss_between_reports_is_skipped_on_the_device(prepared_data, tmp_path, policy):
    """Step 3 is not a reporting step (every 5th is): its update is skipped on the device, the step counts,
    and step 5 reports it; under `stop` the run stops there."""
    run_dir = tmp_path / "run"
    result = run_training(run_dir, prepared_data, "trainer.max_steps=10", "trainer.log_every=5",
                          f"trainer.nonfinite={policy}", fault="nan:step=3", check=False)
    what = "1 non-finite step(s) since the last report, the latest at step 3, had their updates skipped"
    if policy == "skip":
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"warning: {what}; training goes on" in result.stdout
        assert losses(run_dir).keys() == {5, 10} and all(v == v for v in losses(run_dir).values())
    else:
        assert result.returncode != 0 and f"NonFiniteLoss: {what}; stopping (trainer.nonfinite=stop" in result.stderr
        assert not (run_dir / "metrics.jsonl").exists() or not losses(run_dir)


@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_non_finite_loss(prepared_data, tmp_path, policy):
    run_dir = tmp_path / "run"
    result = run_training(run_dir, prepared_data, "trainer.max_steps=6", f"trainer.nonfinite={policy}",
                          fault="nan:step=3", check=False)
    if policy == "skip":
        assert result.returncode == 0, result.stderr[-3000:]
        assert "warning: non-finite loss at step 3 (loss nan" in result.stdout and "the step is skipped" in result.stdout
        logged = losses(run_dir)
        assert sorted(logged) == list(range(1, 7)) and all(v == v for v in logged.values())  # no NaN logged
    else:
        assert result.returncode != 0
        assert "NonFiniteLoss: non-finite loss at step 3" in result.stderr
        assert "stopping (trainer.nonfinite=stop" in result.stderr
        assert max(losses(run_dir)) == 2


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
