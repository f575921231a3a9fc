"""Submit training to a SLURM cluster: one job, or the whole pipeline as dependent jobs.

    python -m launch.slurm stage=pretrain model=llama3 cluster=generic_gpu cluster.nodes=4 [train overrides]
    python -m launch.slurm ... --dry-run           # print the batch script, submit nothing
    python -m launch.slurm --pipeline cluster=generic_gpu [data.X=.. pretrain.X=.. train.X=..]

`cluster=<name>` picks a preset from configs/cluster/ (partition, account, qos, time, nodes, GPUs and
processes per node, memory, environment set-up, extra #SBATCH lines); `cluster.KEY=VALUE` changes one
field. Every other argument is a Hydra override of `python -m train`, checked here by composing the
training config before anything is submitted. The batch script (slurm/job.sbatch.j2) runs one
elastic torchrun per node with a c10d rendezvous on the first node, turns SLURM's USR1 warning into a
checkpoint and a requeue, and logs per job and per node under cluster.log_dir. With --pipeline, data
preparation, pre-training, mid-training, SFT, DPO and the final report (passkey, chat, export, summary)
are chained with --dependency=afterok, their overrides routed by prefix as in launch.pipeline, and
their W&B runs grouped under one pipeline group.
"""

import argparse
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import jinja2
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from common.compose import compose
from common.help import group_text, options_text
from launch import pipeline
from train import run_folder
from train.run_folder import wandb_run_id
from train.batch_plan import batch_plan
from train.parallel.dims import ParallelDims
from train.parallel.pipeline import check_pipeline
from train.config import TrainConfig, compose_train_config

TEMPLATE = Path(__file__).resolve().parents[1] / "slurm" / "job.sbatch.j2"


@dataclass
class ClusterConfig:
    name: str = "generic_gpu"  # the preset's name
    partition: Optional[str] = None  # --partition
    account: Optional[str] = None  # --account: the allocation the job is charged to
    qos: Optional[str] = None  # --qos
    time: str = "24:00:00"  # the job's time limit (HH:MM:SS or D-HH:MM:SS); requeues continue past it
    nodes: int = 1  # --nodes of a training job (data preparation and the report run on one)
    gpus_per_node: int = 0  # 0: no --gpus-per-node (CPU nodes)
    nproc_per_node: int = 1  # training processes per node (usually = GPUs per node)
    cpus_per_node: Optional[int] = None  # --cpus-per-task of the one task per node
    mem: Optional[str] = None  # --mem per node, e.g. "0" (all of it) or "480G"
    setup: List[str] = field(default_factory=list)  # shell lines before training: modules, venv, ...
    env: Dict[str, str] = field(default_factory=dict)  # exported variables (NCCL_*, OMP_NUM_THREADS, ...)
    sbatch: List[str] = field(default_factory=list)  # extra #SBATCH options, e.g. --exclusive
    signal_grace_s: int = 300  # USR1 this long before the time limit: time to finish a step and checkpoint
    max_restarts: int = 3  # elastic restarts of the workers within one job (a dead worker, a lost node)
    python: str = "python"  # the interpreter after `setup`
    log_dir: str = "outputs/slurm"  # batch and per-node logs, and the rendered scripts


@dataclass
class SlurmLaunchConfig:
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


ConfigStore.instance().store(name="slurm_schema", node=SlurmLaunchConfig)


@dataclass
class Job:
    name: str  # SLURM's --job-name, also the start of its log files' names
    script: str
    run_dir: Optional[Path] = None  # training jobs: where checkpoints and metrics go
    config: Optional[TrainConfig] = None  # training jobs: the composed training config


def compose_cluster(overrides: List[str]) -> ClusterConfig:
    return OmegaConf.to_object(compose("slurm", overrides)).cluster


def render(title: str, job_name: str, cluster: ClusterConfig, nodes: int, log_dir: Path, *, module: str = "",
           args: List[str] = (), run_dir: Optional[Path] = None, commands: List[List[str]] = ()) -> str:
    """A batch script: torchrun on every node (module + args, a training run in run_dir), or plain
    commands on one node (commands)."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["q"] = lambda value: shlex.quote(str(value))
    env.filters["join_q"] = shlex.join
    template = env.from_string(TEMPLATE.read_text())
    return template.render(
        title=title, job_name=job_name, cluster=cluster, nodes=nodes, log_dir=log_dir, workdir=Path.cwd(),
        torchrun=bool(module), module=module, args=list(args), commands=list(commands),
        stop_file=run_dir / run_folder.STOP if run_dir else "",
        done_file=run_folder.finished_marker(run_dir) if run_dir else "",
    )


def wandb_line(config: TrainConfig) -> str:
    """Where the job's W&B run will be. Its id is fixed now (the trainer reads it from the run folder),
    so the address is known before the job starts, and stays the same through requeues."""
    settings = config.logging.wandb
    if settings.mode == "disabled":
        return "W&B: off (add logging.wandb.mode=online, or offline on clusters without internet)"
    run_dir = config.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id = wandb_run_id(run_dir)
    where = f"{settings.entity}/{settings.project}" if settings.entity else settings.project
    line = f"W&B: project {where}, group {settings.group or '-'}, run {config.run_name} (id {run_id}, {settings.mode})"
    if settings.mode == "online" and settings.entity:
        line += f": https://wandb.ai/{settings.entity}/{settings.project}/runs/{run_id}"
    if settings.mode == "offline":
        line += f"; afterwards: wandb sync {run_dir}/wandb/offline-run-*"
    return line


def training_job(cluster: ClusterConfig, overrides: List[str], log_dir: Path, title: str) -> Job:
    config = compose_train_config(overrides)
    ranks = cluster.nodes * cluster.nproc_per_node
    try:  # what the workers would refuse at start-up, after waiting in the queue
        dims = ParallelDims.resolve(config.parallel, ranks)
        dims.check_model(config.model, config.data.seq_len, config.stage)
        plan = batch_plan(config.trainer.global_batch_size, config.trainer.micro_batch_size, dims.dp_size)
        check_pipeline(config.parallel, config.model, config.stage, plan.accumulation)
    except ValueError as error:
        raise SystemExit(f"error: {error} (cluster.nodes={cluster.nodes} x cluster.nproc_per_node="
                         f"{cluster.nproc_per_node} = {ranks} ranks)")
    run_dir = config.run_dir.resolve()
    name = f"{config.stage}-{config.run_name}" if config.stage != config.run_name else config.stage
    script = render(title, name, cluster, cluster.nodes, log_dir, module="train", args=overrides, run_dir=run_dir)
    return Job(name, script, run_dir, config)


def pipeline_jobs(cluster: ClusterConfig, items: List[str], out: Path, log_dir: Path) -> List[Job]:
    """Data preparation, the four training stages and the report, each one job (the report and data
    jobs on one node); launch.pipeline's commands, so both launchers run the same pipeline."""
    routed = pipeline.split_overrides(items)
    python = cluster.python
    jobs = [Job("data", render("data preparation", "data", cluster, 1, log_dir,
                               commands=pipeline.data_commands(python, out / "data", routed["data"])))]
    for stage in pipeline.TRAIN_STAGES:
        jobs.append(training_job(cluster, pipeline.stage_overrides(stage, out, routed), log_dir, f"pipeline stage {stage}"))
    report = [python, "-m", "launch.pipeline", "--out", str(out), *items]
    jobs.append(Job("report", render("pipeline report: passkey, chat, Hugging Face export, summary", "report",
                                     cluster, 1, log_dir, commands=[report])))
    return jobs


def submit(job: Job, log_dir: Path, dependency: Optional[str]) -> str:
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"{job.name}-{time.strftime('%Y%m%d-%H%M%S')}.sbatch"
    path.write_text(job.script)
    command = ["sbatch", "--parsable", *([f"--dependency=afterok:{dependency}"] if dependency else []), str(path)]
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    except FileNotFoundError:
        raise SystemExit("error: sbatch not found; run on a SLURM login node, or use --dry-run to see the script")
    if result.returncode != 0:
        raise SystemExit(f"error: {shlex.join(command)} failed: {result.stderr.strip()}")
    return result.stdout.strip().split(";")[0]


def help_epilog() -> str:
    """--help's groups and cluster options, from ClusterConfig's field comments and the default preset."""
    cluster = compose_cluster([])
    return "\n".join([
        "groups (GROUP=NAME picks a preset from configs/GROUP/):", group_text(["cluster"], {"cluster": cluster.name}), "",
        "cluster options (cluster.KEY=VALUE; the default preset's values):", options_text(ClusterConfig, cluster, "cluster."),
        "", "Every other KEY=VALUE is a `python -m train` override: `python -m train --help` lists them; with --pipeline",
        "they go to one stage by prefix, as in `python -m launch.pipeline --help`."])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, epilog=help_epilog(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="print the batch script(s); submit nothing")
    parser.add_argument("--pipeline", action="store_true", help="the whole pipeline as dependent jobs")
    parser.add_argument("--out", default="outputs", help="--pipeline: folder for data/, runs/, hf/ and the summary")
    args, rest = parser.parse_known_args(argv)
    unknown = [item for item in rest if item.startswith("--")]
    if unknown:
        parser.error(f"unknown option(s) {unknown}; Hydra overrides are KEY=VALUE")
    cluster_overrides = [item for item in rest if re.match(r"^cluster[.=]", item)]
    overrides = [item for item in rest if item not in cluster_overrides]
    try:
        cluster = compose_cluster(cluster_overrides)
        log_dir = Path(cluster.log_dir).resolve()
        if args.pipeline:
            jobs = pipeline_jobs(cluster, overrides, Path(args.out).resolve(), log_dir)
        else:
            jobs = [training_job(cluster, overrides, log_dir, f"python -m train {shlex.join(overrides)}")]
    except (HydraException, OmegaConfBaseException) as error:  # a typo in an override: nothing submitted
        raise SystemExit(f"error: {error}")
    if args.dry_run:
        for job in jobs:
            print(job.script)
        return 0
    dependency, ids = None, []
    for job in jobs:
        dependency = submit(job, log_dir, dependency)
        ids.append(dependency)
        print(f"submitted job {dependency} ({job.name})")
        print(f"  log:       {log_dir}/{job.name}-{dependency}.out" + (" (and one per node: *-<node>.out)" if job.run_dir else ""))
        if job.run_dir:
            print(f"  run:       {job.run_dir}")
            print(f"  {wandb_line(job.config)}")
    print(f"watch: squeue --jobs {','.join(ids)}; tail -f {log_dir}/{jobs[-1].name}-{dependency}.out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
