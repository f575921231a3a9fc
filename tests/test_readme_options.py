"""The README's option tables say what `--help` says: each row's option, default and meaning are the ones
the command composes and its dataclass field comment gives (common/help.py)."""

import re

import pytest

from common.compose import compose
from common.help import option_rows
from common.paths import REPO
from data.config import PrepareConfig
from train.config import TrainConfig


def readme_tables() -> dict:
    """{command: [(option, default, meaning)]} of the tables after 'The options used most (`python -m X --help`'."""
    text = REPO.joinpath("README.md").read_text()
    tables = {}
    for command, table in re.findall(r"The options used most \(`python -m (\w+)\s+--help`.*?\n\n((?:\|[^\n]*\n)+)", text, re.S):
        rows = [re.split(r"(?<!\\)\|", line.strip())[1:-1] for line in table.splitlines()[2:]]
        tables[command] = [(o.strip().strip("`"), d.strip().strip("`"), m.strip().replace("\\|", "|")) for o, d, m in rows]
    return tables


@pytest.mark.parametrize("command,schema", [("train", TrainConfig), ("data", PrepareConfig)])
def test_readme_option_tables_agree_with_the_help(command, schema):
    table = readme_tables()[command]
    assert len(table) >= 10
    rows = {key: (value, meaning) for key, value, meaning in option_rows(schema, compose(command, []))}
    for option, default, meaning in table:
        assert rows[option] == (default, meaning), option
