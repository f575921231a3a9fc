"""launch.slurm without a cluster: the rendered batch script of the GPU preset (dry run), the pipeline
as dependent jobs (a stand-in sbatch records what would be submitted), and errors before submitting."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from common.paths import REPO



def slurm(*args, env=None, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "launch.slurm", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)


def test_gpu_preset_dry_run_renders_the_expected_batch_script(tmp_path):
    result = slurm("--dry-run", "cluster=generic_gpu", "cluster.nodes=4", "cluster.account=proj42", "stage=pretrain",
                   "model=llama3", f"out_dir={tmp_path}", "run_name=big", "trainer.max_steps=1000",
                   "trainer.global_batch_size=256",
                   "logging.wandb.tags=[scale, v2]")
    assert result.returncode == 0, result.stderr
    script = result.stdout
    sbatch = re.findall(r"^#SBATCH (.*)$", script, re.M)
    log_dir = REPO / "outputs" / "slurm"
    assert sbatch == ["--job-name=pretrain-big", "--nodes=4", "--ntasks-per-node=1", "--cpus-per-task=64",
                      "--gpus-per-node=8", "--mem=0", "--time=24:00:00", "--partition=gpu", "--account=proj42",
                      f"--output={log_dir}/%x-%j.out", "--open-mode=append", "--requeue", "--signal=B:USR1@300",
                      "--exclusive"]
    torchrun = " ".join(line.strip(" \\") for line in script.splitlines() if line.startswith(("srun", "  ")))
    assert (f"srun --kill-on-bad-exit=1 --output={log_dir}/%x-%j-%N.out --open-mode=append python -m "
            "torch.distributed.run --nnodes \"$SLURM_NNODES\" --nproc-per-node 8 --rdzv-backend c10d "
            "--rdzv-endpoint \"$head_addr:$port\" --rdzv-id \"$SLURM_JOB_ID\" --max-restarts 3 -m train stage=pretrain "
            f"model=llama3 out_dir={tmp_path} run_name=big trainer.max_steps=1000 trainer.global_batch_size=256 "
            "'logging.wandb.tags=[scale, v2]' &") in torchrun
    assert "trap '" in script and f'STOP_FILE={tmp_path}/big/stop' in script
    assert "scontrol requeue \"$SLURM_JOB_ID\"" in script and "source .venv/bin/activate" in script
    assert "export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in script and "export OMP_NUM_THREADS=8" in script
    checked = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize("bad, message", [
    (["cluster.nodez=2"], "nodez"),
    (["cluster=no_such_cluster"], "no_such_cluster"),
    (["trainer.max_stepz=5"], "max_stepz"),
    (["--dryrun"], "unknown option"),
    (["trainer.global_batch_size=6"], "global_batch_size=6 does not divide over 4 data-parallel ranks; use a multiple "
                                      "of 4, e.g. trainer.global_batch_size=4 or 8 (cluster.nodes=2"),
    (["parallel.tp=3"], "parallel.tp=3 != world size 4"),
    (["parallel.tp=2", "trainer.global_batch_size=3"], "global_batch_size=3 does not divide over 2 data-parallel ranks"),
    (["parallel.pp=3"], "parallel.pp=3 x parallel.dp_replicate=1 x parallel.dp_shard=1 != world size 4"),
    (["parallel.pp=2"], "1 micro-batch(es) per rank and step"),  # 16 / 2 dp ranks / micro-batches of 8
])
def test_a_typo_fails_before_anything_is_submitted(bad, message):
    result = slurm("--dry-run", "cluster=local_test", *bad)
    assert result.returncode != 0 and message in result.stderr


def test_pipeline_is_submitted_as_jobs_that_each_wait_for_the_previous_one(tmp_path):
    """A stand-in sbatch on PATH records its arguments and answers with job ids 101, 102, ..."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(
        "#!/bin/bash\necho \"$@\" >> \"$SBATCH_CALLS\"\necho $((100 + $(wc -l < \"$SBATCH_CALLS\")))\n")
    (bin_dir / "sbatch").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SBATCH_CALLS=str(tmp_path / "calls"))
    out = tmp_path / "pipe"
    result = slurm("--pipeline", "--out", str(out), "cluster=local_test", f"cluster.log_dir={tmp_path / 'logs'}",
                   "pretrain.trainer.max_steps=7", "train.logging.wandb.mode=online", "train.logging.wandb.entity=team",
                   "train.trainer.micro_batch_size=1", env=env)
    assert result.returncode == 0, result.stderr
    calls = [line.split() for line in (tmp_path / "calls").read_text().splitlines()]
    assert [c[:-1] for c in calls] == [["--parsable"]] + [["--parsable", f"--dependency=afterok:{101 + i}"]
                                                           for i in range(5)]
    scripts = [Path(c[-1]).read_text() for c in calls]
    names = [re.search(r"--job-name=(\S+)", s).group(1) for s in scripts]
    assert names == ["data", "pretrain", "midtrain", "sft", "dpo", "report"]
    assert "-m data" in scripts[0] and "name=stdlib_long" in scripts[0] and "srun" not in scripts[0]
    group = (out / "wandb_group").read_text().strip()
    for stage, script in zip(names[1:5], scripts[1:5]):
        assert f"-m train stage={stage} out_dir={out / 'runs'}" in script and f"logging.wandb.group={group}" in script
        assert "logging.wandb.mode=online" in script and "--nnodes \"$SLURM_NNODES\" --nproc-per-node 2" in script
        run_id = (out / "runs" / stage / "wandb_run_id").read_text()  # fixed at submission, read by the trainer
        assert f"https://wandb.ai/team/llm-blocks/runs/{run_id}" in result.stdout
    assert "trainer.max_steps=7" in scripts[1] and "trainer.max_steps=7" not in scripts[2]
    assert f"init.weights={out / 'runs' / 'sft' / 'model'}" in scripts[4]
    assert f"-m launch.pipeline --out {out}" in scripts[5]
    assert "submitted job 106 (report)" in result.stdout and f"W&B: project team/llm-blocks, group {group}" in result.stdout
