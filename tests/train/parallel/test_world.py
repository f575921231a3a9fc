"""train/parallel/world.py's start-up settings: timeouts, TF32, determinism (CPU; torch's setters stubbed), denormals."""

import os
import subprocess
import sys
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from common.paths import REPO
from train.config import ParallelConfig
from train.parallel import world


@pytest.fixture
def fresh_env(monkeypatch):
    """init_world fills RANK/WORLD_SIZE/... for a group of one; undo that after the test."""
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_USE_AGENT_STORE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)


def test_timeouts_reach_the_process_group(monkeypatch, fresh_env):
    calls = {}
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.update(backend=backend, **kw))
    monkeypatch.setattr(world, "set_collective_timeout", lambda config: calls.update(training=config.timeout_s))
    config = ParallelConfig(device="cpu", init_timeout_s=90.0, timeout_s=30.0)
    result = world.init_world(config)
    assert result.size == 1 and result.device == torch.device("cpu")
    assert calls["backend"] == "gloo" and calls["timeout"] == timedelta(seconds=90) and calls["device_id"] is None
    assert calls["training"] == 30.0


def test_collective_timeout_is_set_on_every_group(monkeypatch):
    """A real one-rank gloo group: the default group gets parallel.timeout_s at start, a group made
    later (as ParallelDims makes its meshes' groups) gets it from set_collective_timeout."""
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    config = ParallelConfig(device="cpu", timeout_s=45.0)
    timeout = lambda group: group._get_backend(torch.device("cpu")).options._timeout  # noqa: E731
    world.init_world(config)
    try:
        assert timeout(dist.group.WORLD) == timedelta(seconds=45)
        later = dist.new_group(backend="gloo")
        assert timeout(later) != timedelta(seconds=45)  # torch's default for new groups
        world.set_collective_timeout(config)
        assert timeout(later) == timedelta(seconds=45)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("seconds", [{"timeout_s": 0.0}, {"init_timeout_s": -1.0}])
def test_a_timeout_must_be_positive(fresh_env, seconds):
    with pytest.raises(ValueError, match="parallel.init_timeout_s"):
        world.init_world(ParallelConfig(device="cpu", **seconds))


@pytest.mark.parametrize("enabled, precision", [(True, "high"), (False, "highest")])
def test_tf32_uses_the_legacy_setter(monkeypatch, enabled, precision):
    """The legacy setter keeps torch.get_float32_matmul_precision() readable (Inductor reads it)."""
    seen = []
    monkeypatch.setattr(torch, "set_float32_matmul_precision", seen.append)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", not enabled)
    world.set_tf32(enabled)
    assert seen == [precision] and torch.backends.cudnn.allow_tf32 is enabled


def test_tf32_is_left_alone_on_cpu(monkeypatch, fresh_env):
    monkeypatch.setattr(dist, "init_process_group", lambda *args, **kw: None)
    monkeypatch.setattr(world, "set_collective_timeout", lambda config: None)
    monkeypatch.setattr(world, "set_tf32", lambda enabled: pytest.fail("set_tf32 on CPU"))
    world.init_world(ParallelConfig(device="cpu"))


def test_determinism_sets_cublas_workspace_and_cudnn(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    modes = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms", modes.append)
    world.set_determinism(True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark and modes == [True]
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's choice is kept
    world.set_determinism(True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    world.set_determinism(False)
    assert not torch.backends.cudnn.deterministic and modes == [True, True, False]


FLUSH_CHECK = """
import sys, torch
torch.set_num_threads(2)
from train.config import ParallelConfig
from train.parallel.world import init_world, close_world
import train.trainer  # what the trainer imports runs before its init_world
init_world(ParallelConfig(device="cpu", flush_denormal=sys.argv[1] == "True"))
x = torch.full((1 << 22,), 1e-39)  # denormal fp32; an elementwise op this long runs on both threads
print(int((x * 1.0).count_nonzero()), x.numel())
close_world()
"""


@pytest.mark.parametrize("enabled", [True, False])
def test_denormals_flush_to_zero_on_every_thread(enabled):
    """parallel.flush_denormal: after init_world a denormal input computes as zero on all the OpenMP
    threads (they copy the main thread's setting when they start), and stays itself when disabled."""
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU has no flush-to-zero (not x86 with SSE3)")
    out = subprocess.run([sys.executable, "-c", FLUSH_CHECK, str(enabled)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    nonzero, total = map(int, out.stdout.split())
    assert nonzero == (0 if enabled else total)
