import pytest

from tests.fault_helpers import start_training


@pytest.fixture
def jobs():
    """The jobs a test starts; whatever is left of them is killed at the end, by PID."""
    started = []
    yield started
    for job in started:
        job.close()


@pytest.fixture(scope="session")
def reference(prepared_data, tmp_path_factory):
    """The uninterrupted run every fault is compared with (2 ranks, 12 steps)."""
    run_dir = tmp_path_factory.mktemp("faults") / "reference"
    started = []
    job = start_training(started, run_dir, prepared_data)
    try:
        assert job.finish() == 0, job.output[-3000:]
    finally:
        job.close()
    return run_dir
