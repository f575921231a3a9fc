"""bench/families.py: a row for every Hugging Face adapter, and its smoke run (one family, one timed step per
side and precision) checks the first-step losses and prints the table."""

import os
import subprocess
import sys

import pytest

from bench.families import FAMILIES
from common.paths import REPO
from train.model.hf import ADAPTERS


def test_every_adapter_has_a_row():
    assert sorted(FAMILIES) == sorted(adapter.FAMILY for adapter in ADAPTERS)


@pytest.mark.slow
@pytest.mark.heavy
def test_smoke_run_prints_the_row(prepared_data):
    result = subprocess.run([sys.executable, str(REPO / "bench" / "families.py"), "--families=qwen3", "--steps=1", "--warmup=0",
                             f"--data={prepared_data}", "--device=cpu"], capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "matmul peak fp32" in result.stdout
    assert result.stdout.count("first-step loss ours") == 2  # fp32 and bf16
    rows = [line.split(" | ") for line in result.stdout.splitlines() if line.startswith("| qwen3 |")]
    assert len(rows) == 1
    for cell in rows[0][4:10]:  # tokens/s (MFU) and ratios of both precisions: measured, not zero
        assert float(cell.split()[0].rstrip("x").replace(",", "")) > 0, rows[0]
