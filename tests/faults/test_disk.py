"""What the disk does to a run: a full disk while saving, and a checkpoint file cut short."""

import re
import shutil
import subprocess

import pytest

from tests.fault_helpers import assert_survived, start_training

pytestmark = pytest.mark.slow


def test_full_disk_while_saving_stops_with_one_line_and_a_rerun_with_space_resumes(reference, prepared_data,
                                                                                   tmp_path, jobs):
    """The run folder on a 20 MB tmpfs: step 3's checkpoint (14 MB) fits, step 6's does not."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(disk)], capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here ({mount.stderr.strip()}); needs root")
    try:
        run_dir = disk / "run"
        job = start_training(jobs, run_dir, prepared_data, logs=tmp_path)
        assert job.finish() != 0
        said = re.findall(r"^\S*CheckpointError: .*$", job.output, re.M)  # one line, from each rank
        assert len(said) == 2 and all(re.fullmatch(
            rf"\S*CheckpointError: {re.escape(str(run_dir / 'checkpoints' / 'step_00000006'))}: no space left on the "
            r"device \(0\.\d MB free\) while saving this checkpoint; the last complete one, step_00000003, is intact: "
            "make room and rerun to resume", line) for line in said), said

        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        rerun = start_training(jobs, run_dir, prepared_data, logs=tmp_path)
        assert rerun.finish() == 0, rerun.output[-3000:]
        assert f"resumed from {run_dir / 'checkpoints' / 'step_00000003'}" in rerun.output
        assert_survived(run_dir, reference)
        print(f"the rerun's first step {rerun.recovery(rerun.started):.1f} s after its start")
    finally:
        for job in jobs:
            job.close()
        subprocess.run(["umount", "--lazy", str(disk)], check=True)


def test_truncated_checkpoint_falls_back_to_the_previous_one(reference, prepared_data, tmp_path, jobs):
    """The finished reference run's last checkpoint with one rank's .distcp cut in half, then the run again."""
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir, ignore=shutil.ignore_patterns("model"))
    latest = run_dir / "checkpoints" / "step_00000012"
    part = latest / "__1_0.distcp"
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    job = start_training(jobs, run_dir, prepared_data)
    assert job.finish() == 0, job.output[-3000:]
    assert f"warning: checkpoint {latest} cannot be read (" in job.output
    assert f"warning: moved step_00000012 to {run_dir / 'checkpoints' / 'unreadable'}" in job.output
    assert f"resumed from {run_dir / 'checkpoints' / 'step_00000009'}" in job.output
    assert (run_dir / "checkpoints" / "unreadable" / "step_00000012" / ".metadata").is_file()  # kept, to inspect
    assert_survived(run_dir, reference)
    print(f"the first step {job.recovery(job.started):.1f} s after the start")
