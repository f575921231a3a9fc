"""The post-training benchmark's smoke run (`--quick`: 64 rows, 3 steps per row and side) trains every row on
both sides and prints the table."""

import os
import subprocess
import sys

import pytest

from common.paths import REPO
from tests.shared_data import SHARED_DATA

pytestmark = [pytest.mark.slow, pytest.mark.heavy]
ROWS = ["SFT packed", "SFT padded", "DPO live ref", "DPO precomputed ref"]


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data (real public data sets) is not on this machine")
def test_quick_run_prints_the_table(prepared_data):
    result = subprocess.run([sys.executable, str(REPO / "bench" / "post_training.py"), "--quick", f"--data={prepared_data}",
                             f"--shared={SHARED_DATA}", "--device=cpu"], capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    table = [line.split(" | ") for line in result.stdout.splitlines() if line.startswith("| ") and "x |" in line]
    assert [cells[0][2:] for cells in table] == ROWS
    for cells in table:  # tokens/s and examples/s of both sides: measured, not zero
        assert all(float(cells[i].replace(",", "")) > 0 for i in (1, 2, 4, 5)), cells
    assert "reference log-probs precomputed before training" in result.stdout
