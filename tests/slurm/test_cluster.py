"""Training on the real two-node SLURM test cluster (2 nodes x 2 processes, gloo): a job that completes,
a preempted job that checkpoints, requeues and finishes without repeating steps, and a killed worker
that the elastic restart recovers from."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from common.paths import REPO
from tests.slurm.conftest import LAB
from tests.train_helpers import FAST, metrics, wandb_history, wandb_records
from train.checkpoint import latest_complete

pytestmark = pytest.mark.slow
STEP_LINE = re.compile(r"^step\s+(\d+)/\d+ \| loss", re.M)


def submit(env, tmp_path, data, run_name, *overrides) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "launch.slurm", "cluster=local_test", "cluster.nodes=2", f"cluster.log_dir={tmp_path / 'logs'}",
         f"out_dir={tmp_path / 'runs'}", f"run_name={run_name}", f"data.path={data}", *FAST, *overrides],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    return re.search(r"submitted job (\d+)", result.stdout).group(1)


def job_state(env, job: str) -> dict:
    line = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, env=env).stdout
    return dict(re.findall(r"(\w+)=(\S*)", line))


def wait_for_job(env, job: str, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = job_state(env, job)
        if state.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return state
        time.sleep(1)
    subprocess.run(["scancel", job], env=env)
    raise AssertionError(f"job {job} did not end in {timeout} s: {job_state(env, job)}")


def wait_for_step(run_dir: Path, step: int, timeout: float = 180) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run_dir / "metrics.jsonl").exists():
            steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
            if steps and steps[-1] >= step:
                return steps[-1]
        time.sleep(0.2)
    raise AssertionError(f"{run_dir} never reached step {step}")


def logs(tmp_path, job: str) -> dict:
    return {path.name: path.read_text() for path in (tmp_path / "logs").glob(f"*-{job}*.out")}


def printed_steps(node_logs: dict) -> list:
    """The training steps rank 0 printed, in order, over every attempt (rank 0 may be on either node)."""
    return [int(step) for text in node_logs.values() for step in STEP_LINE.findall(text)]


def test_two_nodes_train_to_the_end_with_checkpoint_metrics_and_wandb(slurm_cluster, tmp_path, prepared_data):
    job = submit(slurm_cluster, tmp_path, prepared_data, "two_nodes", "trainer.max_steps=12", "checkpoint.every=6",
                 "logging.wandb.mode=offline", "logging.wandb.group=slurm-test")
    state = wait_for_job(slurm_cluster, job)
    job_logs = logs(tmp_path, job)
    assert state["JobState"] == "COMPLETED" and state["ExitCode"] == "0:0", job_logs
    assert sorted(job_logs) == [f"pretrain-two_nodes-{job}-n1.out", f"pretrain-two_nodes-{job}-n2.out",
                                f"pretrain-two_nodes-{job}.out"]
    run_dir = tmp_path / "runs" / "two_nodes"
    assert "4 rank(s)" in "".join(job_logs.values())
    assert [m["step"] for m in metrics(run_dir) if "loss" in m] == list(range(1, 13))
    assert (run_dir / "checkpoints" / "step_00000012" / ".metadata").is_file()
    assert (run_dir / "model" / "model.safetensors").is_file()

    [run_file] = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    run = next(r.run for r in wandb_records(run_file) if r.WhichOneof("record_type") == "run")
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert run.run_group == "slurm-test" and run.run_id == (run_dir / "wandb_run_id").read_text()  # the id printed at submission
    assert config["launch"]["slurm_job_id"] == job and config["launch"]["slurm_nodelist"] == "n[1-2]"
    assert config["launch"]["world_size"] == 4 and len(config["launch"]["git_commit"]) >= 40
    assert config["trainer"]["max_steps"] == 12
    assert "wandb sync" in "".join(job_logs.values())


@pytest.mark.heavy
def test_tensor_and_context_parallel_layout_trains_across_two_nodes(slurm_cluster, tmp_path, prepared_data):
    """tp 2 x cp 2 over the cluster's 4 ranks (each tp group on one node, the cp groups across the nodes)."""
    job = submit(slurm_cluster, tmp_path, prepared_data, "tp_cp", "trainer.max_steps=3", "parallel.tp=2", "parallel.cp=2")
    state = wait_for_job(slurm_cluster, job)
    job_logs = logs(tmp_path, job)
    assert state["JobState"] == "COMPLETED" and state["ExitCode"] == "0:0", job_logs
    assert "4 rank(s): cp 2 x tp 2" in "".join(job_logs.values())
    assert [m["step"] for m in metrics(tmp_path / "runs" / "tp_cp") if "loss" in m] == [1, 2, 3]


@pytest.mark.heavy
def test_preempted_job_checkpoints_requeues_and_finishes_without_repeating_steps(slurm_cluster, tmp_path, prepared_data):
    job = submit(slurm_cluster, tmp_path, prepared_data, "preempted", "trainer.max_steps=120", "checkpoint.every=1000",
                 "logging.wandb.mode=offline")
    run_dir = tmp_path / "runs" / "preempted"
    wait_for_step(run_dir, 10)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=slurm_cluster, check=True)
    state = wait_for_job(slurm_cluster, job)
    job_logs = logs(tmp_path, job)
    text = "".join(job_logs.values())
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "1", text[-3000:]
    stopped = int(re.search(r"stopped at step (\d+) on request; checkpoint saved", text).group(1))
    assert stopped >= 10 and f"resumed from {run_dir.resolve() / 'checkpoints' / f'step_{stopped:08d}'}" in text
    assert "requeueing job" in text
    assert printed_steps(job_logs) == list(range(1, 121))  # no step done twice, none skipped
    assert [m["step"] for m in metrics(run_dir) if "loss" in m] == list(range(1, 121))
    assert (run_dir / "model" / "model.safetensors").is_file() and not (run_dir / "stop").exists()
    [(first_id, first_steps), (second_id, second_steps)] = wandb_history(run_dir)  # the requeued job resumed the run
    assert first_id == second_id and first_steps == list(range(1, stopped + 1))
    assert second_steps == list(range(stopped + 1, 121))


def worker_pids(job: str, rank: int) -> list:
    """Training processes of a SLURM job with a given global rank (found through their environment)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            env = dict(item.split("=", 1) for item in (proc / "environ").read_text().split("\0") if "=" in item)
        except OSError:
            continue
        if env.get("SLURM_JOB_ID") == job and env.get("RANK") == str(rank) and "TORCHELASTIC_RUN_ID" in env:
            found.append(int(proc.name))
    return found


@pytest.mark.heavy
def test_killed_worker_on_one_node_restarts_and_completes(slurm_cluster, tmp_path, prepared_data):
    job = submit(slurm_cluster, tmp_path, prepared_data, "killed", "trainer.max_steps=100", "checkpoint.every=10")
    run_dir = tmp_path / "runs" / "killed"
    wait_for_step(run_dir, 12)
    [victim] = worker_pids(job, rank=3)
    os.kill(victim, signal.SIGKILL)
    state = wait_for_job(slurm_cluster, job)
    job_logs = logs(tmp_path, job)
    text = "".join(job_logs.values())
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "0", text[-3000:]
    resumed = [int(s) for s in re.findall(r"resumed from \S+ \(step (\d+),", text)]
    assert len(resumed) == 1 and resumed[0] >= 10 and resumed[0] % 10 == 0
    assert [m["step"] for m in metrics(run_dir) if "loss" in m] == list(range(1, 101))
    assert (run_dir / "model" / "model.safetensors").is_file()


def node_processes(node: str) -> list:
    """Everything of test-cluster node `node` that a lost node takes down: its slurmd, the job tasks it runs
    (found through SLURMD_NODENAME in their environment: torchrun, its workers, their savers) and the
    slurmstepd above them."""
    found = {int((LAB / "run" / f"slurmd-{node}.pid").read_text())}
    for proc in Path("/proc").iterdir():
        try:
            env = dict(item.split("=", 1) for item in (proc / "environ").read_text().split("\0") if "=" in item)
        except OSError:
            continue
        if env.get("SLURMD_NODENAME") == node:
            found.add(int(proc.name))
            parent = int(re.search(r"^PPid:\s+(\d+)", (proc / "status").read_text(), re.M).group(1))
            if (Path("/proc") / str(parent) / "cmdline").read_bytes().startswith(b"slurmstepd"):
                found.add(parent)
    return sorted(found)


def node_state(env, node: str) -> str:
    return subprocess.run(["sinfo", "-h", "-N", "-n", node, "-o", "%t"], capture_output=True, text=True, env=env).stdout.strip()


@pytest.mark.heavy
def test_lost_node_requeues_the_job_which_completes_from_the_last_checkpoint(slurm_cluster, tmp_path, prepared_data):
    """kill -9 of node n2's slurmd and all its job's processes mid-run: SLURM finds the node gone (SlurmdTimeout),
    the job is requeued, and once the node is back it resumes from the last complete checkpoint."""
    job = submit(slurm_cluster, tmp_path, prepared_data, "lost_node", "trainer.max_steps=60", "checkpoint.every=10")
    run_dir = tmp_path / "runs" / "lost_node"
    wait_for_step(run_dir, 24)
    for pid in node_processes("n2"):
        os.kill(pid, signal.SIGKILL)
    killed = time.time()
    time.sleep(1)
    last = latest_complete(run_dir / "checkpoints")
    deadline = time.time() + 120
    while not node_state(slurm_cluster, "n2").startswith("down") and time.time() < deadline:
        time.sleep(1)
    assert node_state(slurm_cluster, "n2").startswith("down"), node_state(slurm_cluster, "n2")
    noticed = time.time() - killed
    up = subprocess.run([str(REPO / "slurm" / "testcluster" / "up.sh")], capture_output=True, text=True)  # the node is back
    assert up.returncode == 0, up.stdout + up.stderr
    state = wait_for_job(slurm_cluster, job, timeout=400)
    text = "".join(logs(tmp_path, job).values())
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "1", text[-3000:]
    assert f"resumed from {last.resolve()} " in text
    assert [m["step"] for m in metrics(run_dir) if "loss" in m] == list(range(1, 61))
    assert (run_dir / "model" / "model.safetensors").is_file()
    print(f"lost node: SLURM marked it down {noticed:.0f} s after the kill; the job completed "
          f"{time.time() - killed:.0f} s after it")


@pytest.mark.heavy
def test_sweep_points_run_as_slurm_jobs_and_report(slurm_cluster, tmp_path, prepared_data):
    sweep = [sys.executable, "-m", "launch.sweep", "sweep=attention", "--points", "mha,mqa", "--seeds", "1", "--launcher", "slurm",
             "--cluster", "local_test", "--out", str(tmp_path / "sweep"), f"data.path={prepared_data}",
             "data.seq_len=64", "trainer.max_steps=6", "trainer.micro_batch_size=2"]
    submitted = subprocess.run(sweep, capture_output=True, text=True, env=slurm_cluster, cwd=REPO, timeout=120)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    jobs = re.findall(r"submitted job (\d+)", submitted.stdout)
    assert len(jobs) == 2
    for job in jobs:
        assert wait_for_job(slurm_cluster, job)["JobState"] == "COMPLETED"
    assert sorted(p.name for p in (tmp_path / "sweep" / "slurm").glob("*.out")) == sorted(
        f"pretrain-{point}-{job}{node}.out" for point, job in zip(("mha", "mqa"), jobs) for node in ("", "-n1", "-n2"))
    report = subprocess.run(sweep + ["--report-only"], capture_output=True, text=True, env=slurm_cluster, cwd=REPO,
                            timeout=120)
    assert report.returncode == 0, report.stdout + report.stderr
    rows = json.loads((tmp_path / "sweep" / "report.json").read_text())["rows"]
    assert [(r["point"], r["status"]) for r in rows] == [("mha", "finished"), ("mqa", "finished")]
    assert (tmp_path / "sweep" / "val_loss_vs_tokens.png").stat().st_size > 0


@pytest.mark.heavy
def test_pipeline_as_dependent_jobs_runs_every_stage_in_order(slurm_cluster, tmp_path):
    short = ["data.source.include_modules=false", "data.tokenizer.vocab_size=1024", "train.model.vocab_size=1024",
             "pretrain.trainer.max_steps=8", "midtrain.trainer.max_steps=2", "sft.trainer.max_steps=4",
             "dpo.trainer.max_steps=4", "train.trainer.val_samples=16", "train.trainer.micro_batch_size=1"]
    out = tmp_path / "pipeline"
    result = subprocess.run([sys.executable, "-m", "launch.slurm", "--pipeline", "--out", str(out), "cluster=local_test",
                             f"cluster.log_dir={tmp_path / 'logs'}", *short],
                            capture_output=True, text=True, env=slurm_cluster, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    jobs = re.findall(r"submitted job (\d+) \((\w+)\)", result.stdout)
    assert [name for _, name in jobs] == ["data", "pretrain", "midtrain", "sft", "dpo", "report"]
    states = [wait_for_job(slurm_cluster, job, timeout=600) for job, _ in jobs]
    assert [s["JobState"] for s in states] == ["COMPLETED"] * 6, logs(tmp_path, jobs[-1][0])
    for before, after in zip(states, states[1:]):  # afterok: each job starts once the previous one has ended
        assert after["StartTime"] >= before["EndTime"]
    summary = (out / "pipeline_summary.md").read_text()
    assert all(f"| {stage} |" in summary for stage in ("pretrain", "midtrain", "sft", "dpo"))
    assert (out / "hf" / "config.json").is_file()
