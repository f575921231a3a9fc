"""Where the real public data sets are: `shared/data` beside the repository (as on the developers' machines
and in CI). Tests that use them skip when it is absent."""

from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
