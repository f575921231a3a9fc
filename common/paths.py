"""Where the repository's folders are: the one place that knows the path of `configs/`."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS_DIR = REPO / "configs"
