"""The two-node SLURM test cluster (slurm/testcluster/up.sh) for these tests: started once per session
if it isn't up yet, and stopped at the end only if this session started it. Where it can't start here
(no root, no packages), the tests that need it are skipped with the reason."""

import os
import subprocess
from pathlib import Path

import pytest
from common.paths import REPO

LAB = Path(os.environ.get("LLMB_SLURM_LAB", "/tmp/llm-blocks-slurm"))


@pytest.fixture(scope="session")
def slurm_cluster():
    """The environment for SLURM commands (SLURM_CONF) of a running two-node cluster."""
    up = subprocess.run([str(REPO / "slurm" / "testcluster" / "up.sh")], capture_output=True, text=True)
    if up.returncode != 0:
        reason = (up.stdout + up.stderr).strip().splitlines()[-1:] or ["no output"]
        pytest.skip(f"the SLURM test cluster can't start here: {reason[0]}")
    yield dict(os.environ, SLURM_CONF=str(LAB / "etc" / "slurm.conf"))
    if "all were running" not in up.stdout:
        subprocess.run([str(REPO / "slurm" / "testcluster" / "down.sh")], capture_output=True, text=True)
