"""`--help` of each command names its own groups and options with their meanings (from the config
dataclasses' field comments), and not another command's groups."""

import dataclasses
import re
import subprocess
import sys
from dataclasses import dataclass, field
from typing import List, Optional

import pytest

from common.help import field_comments, option_rows
from train.config import TrainConfig


@dataclass
class Inner:
    depth: int = 3  # how deep


@dataclass
class Example:
    plain: int = 1
    trailing: str = "a"  # said at the end of the line
    # said above,
    # over two lines
    above: Optional[float] = None
    # a section heading, not this field's: it has its own comment
    both: bool = True  # its own
    listed: List[int] = field(default_factory=lambda: [1, 2])  # a list
    inner: Inner = field(default_factory=Inner)
    old: Optional[str] = None  # deprecated spelling of trailing


def test_comments_at_the_end_of_a_line_or_above_a_field():
    assert field_comments(Example) == {"trailing": "said at the end of the line", "above": "said above, over two lines",
                                       "both": "its own", "listed": "a list", "old": "deprecated spelling of trailing"}
    rows = option_rows(Example)
    assert rows == [("plain", "1", ""), ("trailing", "a", "said at the end of the line"),
                    ("above", "null", "said above, over two lines"), ("both", "true", "its own"),
                    ("listed", "[1, 2]", "a list"), ("inner.depth", "3", "how deep")]  # deprecated ones left out


def groups_of(help_text: str) -> set:
    section = help_text.split("Groups (")[1].split("\n\n")[0].splitlines()[1:]
    return {line.split(":")[0].strip() for line in section if re.match(r"  \w+:", line)}


def command_help(*args) -> str:
    result = subprocess.run([sys.executable, "-m", *args, "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_train_help_lists_its_groups_and_options_with_meanings():
    text = command_help("train")
    assert groups_of(text) == {"model", "stage"}  # not cluster, source, sweep (other commands' groups)
    assert "(this command: llama3_tiny)" in text and "(this command: pretrain)" in text
    assert re.search(r"\n  trainer\.max_steps=200 +optimizer steps of the run", text)
    assert re.search(r"\n  logging\.progress=auto +auto \(a progress bar on a terminal", text)
    assert "python -m train stage=pretrain model=llama3_tiny" in text.split("Common command lines:")[1]
    assert "checkpoint.init_from" not in text  # deprecated spellings are not advertised


@pytest.mark.slow
def test_help_shows_the_values_its_command_line_composes():
    sft = command_help("train", "stage=sft")
    assert re.search(r"\n  trainer\.max_steps=600 ", sft) and "(this command: sft)" in sft


def test_data_help_lists_its_groups_and_options_with_meanings():
    text = command_help("data")
    assert groups_of(text) == {"source"}
    assert re.search(r"\n  shards\.val_fraction=0\.01 +fraction of documents held out", text)
    assert re.search(r"\n  source\.txt_unit=file +\.txt: what one document is", text)
    assert "python -m data source=local source.paths=[book.txt]" in text


@pytest.mark.slow
def test_launchers_help_names_their_own_options():
    slurm = command_help("launch.slurm")
    assert "cluster: generic_gpu, local_test (this command: generic_gpu)" in slurm
    assert re.search(r"\n  cluster\.account=null +--account: the allocation", slurm)
    pipeline = command_help("launch.pipeline")
    assert "pretrain.KEY=VALUE" in pipeline and "python -m train --help" in pipeline and "--nproc" in pipeline
    assert "python -m train --help" in command_help("launch.local")


@pytest.mark.parametrize("section", ["trainer", "optim", "checkpoint", "parallel", "logging", "dpo"])
def test_every_training_option_of_a_section_has_a_meaning(section):
    schema = {f.name: f.type for f in dataclasses.fields(TrainConfig)}[section]
    missing = [key for key, _, meaning in option_rows(schema, prefix=f"{section}.") if not meaning]
    assert not missing, f"give these fields a comment (it is their --help): {missing}"
