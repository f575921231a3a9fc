"""Every multi-process command the README shows composes into a training config whose batch splits over
its ranks (and its pipeline stages, where it has them): the local launchers at 1, 2 and 4 processes, torchrun and SLURM at the sizes they state."""

import re
import shlex

import pytest

from common.paths import REPO
from launch import pipeline
from train.batch_plan import batch_plan
from train.config import compose_train_config
from train.parallel.dims import ParallelDims
from train.parallel.pipeline import check_pipeline

LOCAL_SIZES = (1, 2, 4)


def readme_commands(program: str, with_environment: bool = False) -> list:
    """The README's command lines (continuations joined, comments dropped) that start with `program`,
    after any VAR=value environment assignments (returned too, as a dict, `with_environment`)."""
    text = REPO.joinpath("README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    found, words = [], program.split()
    for line in lines:
        command = shlex.split(line.split("  #")[0].split(" # ")[0])
        environment = {}
        while command and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", command[0]):
            key, _, value = command.pop(0).partition("=")
            environment[key] = value
        if command[: len(words)] == words:
            found.append((environment, command) if with_environment else command)
    return found


def check(overrides: list, ranks: int) -> None:
    config = compose_train_config(overrides)
    dims = ParallelDims.resolve(config.parallel, ranks)
    dims.check_model(config.model, config.data.seq_len, config.stage)
    plan = batch_plan(config.trainer.global_batch_size, config.trainer.micro_batch_size, dims.dp_size)
    check_pipeline(config.parallel, config.model, config.stage, plan.accumulation)


def test_the_readme_shows_each_kind_of_command():
    for program in ("python -m launch.local", "python -m launch.pipeline", "torchrun", "python -m launch.slurm",
                    "python -m train"):
        assert readme_commands(program), program


@pytest.mark.parametrize("ranks", LOCAL_SIZES)
def test_local_commands_at_1_2_and_4_processes(ranks):
    for command in readme_commands("python -m launch.local"):
        check([a for a in command[3:] if not a.startswith("--") and not a.isdigit()], ranks)
    for command in readme_commands("python -m train"):
        check(command[3:], ranks)


@pytest.mark.parametrize("ranks", LOCAL_SIZES)
def test_pipeline_commands_at_1_2_and_4_processes(ranks, tmp_path):
    for command in readme_commands("python -m launch.pipeline"):
        items = [a for a in command[3:] if "=" in a and not a.startswith("--")]
        routed = pipeline.split_overrides(items)
        for stage in pipeline.TRAIN_STAGES:
            check(pipeline.stage_overrides(stage, tmp_path, routed), ranks)


def test_torchrun_commands_at_their_size():
    for environment, command in readme_commands("torchrun", with_environment=True):
        options = dict(zip(command[1::2], command[2::2]))
        ranks = int(options["--nnodes"]) * int(options["--nproc-per-node"])
        check(command[command.index("-m") + 2 :], ranks)
        if int(options["--nnodes"]) > 1:  # several nodes must not share one agent's store (train/parallel/world.py)
            assert environment.get("TORCH_DISABLE_SHARE_RDZV_TCP_STORE") == "1", command


def test_slurm_commands_compose_and_split_over_their_ranks(capsys):
    from launch import slurm

    for command in readme_commands("python -m launch.slurm"):
        arguments = [a for a in command[3:] if a != "..."]
        if "..." in command or "$" in " ".join(arguments):
            continue  # an elided line: its full form is the line above it
        assert slurm.main(arguments + ["--dry-run"]) == 0, command
