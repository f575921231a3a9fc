"""The architecture lab end to end on the embedded default data: tiny attention and feed-forward sweeps run
one torchrun per point and report; a re-run skips finished points; a failing point is retried, marked
failed with its reason, and does not stop the others."""

import json
import subprocess
import sys

import pytest
from tests.sweep_helpers import TINY, check_report
from tests.train_helpers import wandb_records

pytestmark = pytest.mark.slow


def sweep(out, data, *args, nproc=2):
    command = [sys.executable, "-m", "launch.sweep", "--out", str(out), "--nproc", str(nproc), "--seeds=1",
               f"data.path={data}", *TINY, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.mark.heavy  # the sweep machinery stays in CI through the failed-point test
def test_attention_sweep_reports_every_point(tmp_path, prepared_data):
    points = ["mha", "gqa", "mqa", "mla", "gated_deltanet"]
    result = sweep(tmp_path, prepared_data, "sweep=attention", f"--points={','.join(points)}")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    rows = check_report(tmp_path, points)
    # the architectures really differ: fewer KV heads cache less, the linear mixer a fixed state
    cache = {p: rows[p]["cache_bytes_per_token_32k"] for p in points}
    assert cache["mha"] == 2 * cache["gqa"] == 4 * cache["mqa"] and cache["gated_deltanet"] < 1
    assert [row["point"] for row in json.loads((tmp_path / "report.json").read_text())["rows"]] == points


@pytest.mark.heavy  # the sweep machinery stays in CI through the failed-point test
def test_ffn_sweep_on_one_process(tmp_path, prepared_data):
    points = ["swiglu", "mlp", "moe"]
    result = sweep(tmp_path, prepared_data, "sweep=ffn", f"--points={','.join(points)}", nproc=1)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    rows = check_report(tmp_path, points)
    assert rows["moe"]["total_params"] > rows["moe"]["active_params"]
    assert rows["swiglu"]["total_params"] == rows["swiglu"]["active_params"]


@pytest.mark.heavy
def test_failed_point_is_reported_and_rerun_skips_finished(tmp_path, prepared_data):
    # a micro-batch of 0 sequences: the trainer stops at start-up
    args = ["sweep=attention", "--points=mqa", "--retries=1", "trainer.micro_batch_size=4,0",
            "logging.wandb.mode=offline"]
    result = sweep(tmp_path, prepared_data, *args)
    assert result.returncode == 1, result.stdout[-4000:] + result.stderr[-4000:]
    good, bad = "mqa_micro_batch_size-4", "mqa_micro_batch_size-0"
    rows = check_report(tmp_path, [good])
    reason = "ValueError: trainer.global_batch_size=8 and trainer.micro_batch_size=0 must be at least 1"
    assert rows[bad]["status"] == "failed" and rows[bad]["attempts"] == 2 and rows[bad]["reason"].startswith(reason)
    assert f"- `{bad}` failed after 2 attempt(s): {reason}" in (tmp_path / "report.md").read_text()
    assert rows[bad]["total_params"] == rows[good]["total_params"]  # the planned architecture, from sweep.json
    runs = [record.run for path in (tmp_path / good).glob("wandb/offline-run-*/run-*.wandb")
            for record in wandb_records(path) if record.WhichOneof("record_type") == "run"]
    assert runs and {run.run_group for run in runs} == {"attention"}  # W&B runs grouped by the sweep's name

    logs = {point: (tmp_path / "logs" / f"{point}.log").read_text() for point in (good, bad)}
    again = sweep(tmp_path, prepared_data, *args, "--retries=0")
    assert again.returncode == 1, again.stdout[-4000:] + again.stderr[-4000:]
    assert f"== {good}: finished earlier, skipped" in again.stdout and f"== {good}: training" not in again.stdout
    assert (tmp_path / "logs" / f"{good}.log").read_text() == logs[good]  # no new process for a finished point
    assert (tmp_path / "logs" / f"{bad}.log").read_text().startswith(logs[bad])  # the failed one is tried again
    rows = check_report(tmp_path, [good])
    assert rows[bad]["status"] == "failed" and rows[bad]["attempts"] == 1


@pytest.mark.heavy  # the sweep machinery stays in CI through the failed-point test
def test_two_seed_sweep_reports_means_and_intervals_of_its_runs(tmp_path, prepared_data):
    """~60 s here: 2 points x 2 seeds of 4 steps on one process each."""
    import math
    import statistics

    short = [a for a in TINY if not a.startswith(("trainer.max_steps", "trainer.log_every", "trainer.val_every"))]
    command = [sys.executable, "-m", "launch.sweep", "--out", str(tmp_path), "--nproc", "1", "sweep=norm",
               "--points=pre_rms,dyt", "--seeds", "2", f"data.path={prepared_data}", *short, "trainer.max_steps=4",
               "trainer.log_every=2", "trainer.val_every=2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert [r["point"] for r in report["runs"]] == ["pre_rms-seed0", "pre_rms-seed1", "dyt-seed0", "dyt-seed1"]
    rows = {row["point"]: row for row in report["rows"]}
    for point in ("pre_rms", "dyt"):
        finals = []
        for seed in (0, 1):
            records = [json.loads(line) for line in (tmp_path / f"{point}-seed{seed}" / "metrics.jsonl").read_text().splitlines()]
            finals.append([r["val_loss"] for r in records if "val_loss" in r][-1])
        assert finals[0] != finals[1]  # the seeds really differ
        mean, sd = statistics.fmean(finals), statistics.stdev(finals)
        half = 12.706204736174705 * sd / math.sqrt(2)  # t_{0.975} with 1 degree of freedom
        row = rows[point]
        assert row["status"] == "finished" and row["val_losses"] == finals
        assert row["final_val_loss"] == pytest.approx(mean, rel=1e-12) and row["val_loss_sd"] == pytest.approx(sd)
        assert row["val_loss_ci95"] == pytest.approx([mean - half, mean + half])
    assert rows["pre_rms"]["verdict"] == "reference" and rows["dyt"]["verdict"] in ("better", "worse", "indistinguishable")
    assert "| dyt | finished |" in (tmp_path / "report.md").read_text()
