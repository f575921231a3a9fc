"""SIGKILL from outside, as the OOM killer, a crash or a lost node deliver it: a random worker at start-up,
in training, while a checkpoint loads and during an async save (writer thread and saver process), and the
torchrun agent itself. Each time the run completes with the uninterrupted run's weights bit for bit, every
step logged once, no incomplete checkpoint left and no process outliving its parent."""

import os
import re
import signal
import time

import pytest

from tests.fault_helpers import STEPS, assert_survived, fault_rng, start_training, step_line, wait_until
from train.checkpoint import latest_complete

pytestmark = pytest.mark.slow


def test_worker_killed_at_start_up_in_training_and_while_loading(reference, prepared_data, tmp_path, jobs):
    rng, run_dir = fault_rng(), tmp_path / "run"
    job = start_training(jobs, run_dir, prepared_data, fault="slow_load:seconds=2", max_restarts=6)
    wait_until(lambda: len(job.workers()) == 2, 60, "both workers started")
    time.sleep(rng.uniform(0, 1.5))
    assert not re.search(step_line(1), job.output, re.M), "start-up was over before the kill"
    job.kill_worker(rng)
    at_start_up = job.killed
    job.assert_no_orphans()

    mark = len(job.lines)
    job.wait_for_output(step_line(rng.randint(4, STEPS - 1)), after=mark)
    job.kill_worker(rng)
    job.assert_no_orphans()

    mark = len(job.lines)
    job.wait_for_output("^reading checkpoint", after=mark)  # the restart loads the latest complete checkpoint
    job.kill_worker(rng)
    job.assert_no_orphans()
    assert job.finish() == 0, job.output[-3000:]
    assert "resumed from" in "".join(job.lines[mark:])
    assert_survived(run_dir, reference)
    print(f"recovered (kill to the next step) in {job.recovery(at_start_up):.1f} s after the kill at start-up, "
          f"{job.recovery(job.killed):.1f} s after the kill while loading")


@pytest.mark.parametrize("mode", [pytest.param("async", marks=pytest.mark.heavy), "async_process"])
def test_worker_killed_during_an_async_save(reference, prepared_data, tmp_path, jobs, mode):
    """The first attempt's writes wait 4 s (FAULT=slow_save), so the kill lands while a save writes; under
    async_process the dead rank's saver process must die at once, never finishing its part."""
    rng, run_dir = fault_rng(), tmp_path / "run"
    job = start_training(jobs, run_dir, prepared_data, f"checkpoint.mode={mode}", fault="slow_save:seconds=4",
                         max_restarts=3)
    folder = run_dir / "checkpoints" / f"step_{rng.choice([3, 6]):08d}"
    job.wait_for_output(f"^writing checkpoint {re.escape(str(folder))}$")
    time.sleep(rng.uniform(0, 1.5))
    assert not (folder / ".metadata").exists(), "the save was over before the kill"
    rank = job.kill_worker(rng)
    job.assert_no_orphans(within=1.0)
    part = folder / f"__{rank}_0.distcp"  # nothing of the dead rank is written after its death
    assert not part.exists() or part.stat().st_mtime < job.killed + 0.5
    assert job.finish() == 0, job.output[-3000:]
    assert_survived(run_dir, reference)
    print(f"recovered (kill to the next step) in {job.recovery(job.killed):.1f} s")


def test_agent_killed_then_the_same_command_resumes(reference, prepared_data, tmp_path, jobs):
    """SIGKILL of torchrun's agent, the whole node as far as this job knows: its workers go too (they would
    otherwise train on into the folder the rerun owns), and a rerun resumes from the last complete checkpoint."""
    rng, run_dir = fault_rng(), tmp_path / "run"
    job = start_training(jobs, run_dir, prepared_data)
    job.wait_for_output(step_line(rng.randint(4, STEPS - 1)))
    os.kill(job.process.pid, signal.SIGKILL)
    killed = time.time()
    assert job.finish() == -signal.SIGKILL  # and nothing of it is left: its workers are gone with it
    gone = time.time() - killed
    last = latest_complete(run_dir / "checkpoints")
    rerun = start_training(jobs, run_dir, prepared_data)
    assert rerun.finish() == 0, rerun.output[-3000:]
    assert f"resumed from {last}" in rerun.output
    assert_survived(run_dir, reference)
    print(f"every process gone {gone:.1f} s after the kill; the rerun's first step {rerun.recovery(killed):.1f} s after it")
