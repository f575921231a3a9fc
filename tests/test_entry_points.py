"""The console scripts of pyproject.toml run the commands' own main functions (what `python -m` runs)."""

import importlib
import re
import tomllib

from common.paths import REPO


def test_console_scripts_point_at_the_commands_mains():
    scripts = tomllib.loads(REPO.joinpath("pyproject.toml").read_text())["project"]["scripts"]
    assert {"llm-blocks-data", "llm-blocks-train", "llm-blocks-pipeline", "llm-blocks-slurm"} <= set(scripts)
    for name, target in scripts.items():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), name
        source = REPO.joinpath(*module.split(".")).with_suffix(".py").read_text()
        assert re.search(rf'if __name__ == "__main__":\n\s+(sys\.exit\()?{function}\(\)', source), name
