"""How points are launched, without training: SLURM submissions (launch.slurm mocked), local retries
(torchrun mocked), and the reason a failed attempt gives."""

import json
import subprocess
import sys

import pytest

from launch import sweep
from launch.sweep import failure_reason

TORCHRUN_FAILURE = """\
[rank0]: Traceback (most recent call last):
[rank0]:   File "/work/main/train/data_loader.py", line 129, in check_batch_sizes
[rank0]: ValueError: trainer.global_batch_size=8 is not a multiple of trainer.micro_batch_size=3 x 2 data-parallel ranks
E1129 03:25:34 torch/distributed/elastic/multiprocessing/api.py:882] failed (exitcode: 1) local_rank: 0
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
train FAILED
  exitcode  : -15 (pid: 14690)  (SIGTERM)
  traceback : Signal 15 (SIGTERM) received by PID 14690
"""
TORCHRUN_KILLED = """\
step    10/20 | loss 5.5477 | lr 2.11e-03
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
  exitcode  : -9 (pid: 4242)
  traceback : Signal 9 (SIGKILL) received by PID 4242
============================================================
"""


def test_failure_reason_prefers_the_exception_then_the_signal():
    assert failure_reason(TORCHRUN_FAILURE, 1) == ("ValueError: trainer.global_batch_size=8 is not a multiple of "
                                                   "trainer.micro_batch_size=3 x 2 data-parallel ranks")
    assert failure_reason(TORCHRUN_KILLED, 1) == "killed: Signal 9 (SIGKILL) received by PID 4242"
    assert failure_reason("all fine until\nit was not\n", 3) == "exit status 3; last line: it was not"
    assert failure_reason("error: cluster=nope: no configs/cluster/nope.yaml\n", 1).startswith("error: cluster=nope")


class FakeSubmit:
    def __init__(self, returncode=0, stdout="Submitted batch job 1234\n", stderr=""):
        self.commands, self.result = [], (returncode, stdout, stderr)

    def __call__(self, command, **kwargs):
        self.commands.append(command)
        return subprocess.CompletedProcess(command, *self.result)


def points(out):
    return json.loads((out / "sweep.json").read_text())["points"]


def test_slurm_submits_one_job_per_point_then_not_again(tmp_path, monkeypatch, capsys):
    fake = FakeSubmit()
    monkeypatch.setattr(sweep.subprocess, "run", fake)
    argv = ["sweep=attention", "--points=mha,mqa", "--seeds=1", "--launcher=slurm", "--cluster=lab", "--nodes=2",
            "--out", str(tmp_path), "trainer.max_steps=50"]
    assert sweep.main(argv) == 0
    planned = points(tmp_path)
    assert fake.commands == [[sys.executable, "-m", "launch.slurm", *p["overrides"], "cluster=lab",
                              f"cluster.log_dir={tmp_path / 'slurm'}", "cluster.nodes=2"] for p in planned]
    assert planned[0]["overrides"] == ["model=llama3_tiny", "trainer.val_every=25", "trainer.max_steps=50",
                                       "model.mixers.full.attention.num_kv_heads=4", f"out_dir={tmp_path}",
                                       "run_name=mha", "logging.wandb.group=attention"]
    assert [p["status"] for p in planned] == ["submitted", "submitted"]
    output = capsys.readouterr().out
    assert output.count("Submitted batch job 1234") == 2 and "--report-only" in output

    assert sweep.main(argv) == 0 and len(fake.commands) == 2  # submitted earlier: not again
    assert sweep.main(argv + ["--resubmit"]) == 0 and len(fake.commands) == 4

    assert sweep.main(["--report-only", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "report.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["submitted", "submitted"]


def test_slurm_dry_run_and_failed_submission(tmp_path, monkeypatch):
    fake = FakeSubmit()
    monkeypatch.setattr(sweep.subprocess, "run", fake)
    base = ["sweep=attention", "--points=gqa", "--seeds=1", "--launcher=slurm", "--cluster=lab", "--out", str(tmp_path)]
    assert sweep.main(base + ["--dry-run"]) == 0
    assert fake.commands[0][-3:] == ["cluster=lab", f"cluster.log_dir={tmp_path / 'slurm'}", "--dry-run"]
    assert not (tmp_path / "sweep.json").exists()

    monkeypatch.setattr(sweep.subprocess, "run", FakeSubmit(1, "", "error: cluster=lab: no configs/cluster/lab.yaml\n"))
    assert sweep.main(base) == 1
    assert points(tmp_path)[0]["status"] == "failed"
    assert points(tmp_path)[0]["reason"] == "error: cluster=lab: no configs/cluster/lab.yaml"


def test_slurm_needs_a_cluster(tmp_path):
    with pytest.raises(SystemExit):
        sweep.main(["sweep=attention", "--launcher=slurm", "--out", str(tmp_path)])


def test_a_failed_attempt_is_retried_and_resumes(tmp_path, monkeypatch):
    calls = []

    def fake_tee(command, log, prefix, env):
        calls.append(command)
        if len(calls) == 1:
            return 1, "[rank1]: RuntimeError: Gloo connectFullMesh failed\n"
        point = prefix.strip("[] ")
        (tmp_path / point / "model").mkdir(parents=True)
        (tmp_path / point / "model" / "model.safetensors").write_bytes(b"")
        return 0, ""

    monkeypatch.setattr(sweep, "tee", fake_tee)
    assert sweep.main(["sweep=heads", "--points=h2x32", "--seeds=1", "--nproc=3", "--retries=2", "--out", str(tmp_path)]) == 0
    assert len(calls) == 2 and calls[0][calls[0].index("--nproc-per-node") + 1] == "3"
    assert calls[0][calls[0].index("-m", 3):][:2] == ["-m", "train"] and calls[0][-1] == "logging.wandb.group=heads"
    point = points(tmp_path)[0]
    assert point["status"] == "finished" and point["attempts"] == 2 and point["reason"] is None
    assert json.loads((tmp_path / "report.json").read_text())["rows"][0]["status"] == "finished"
