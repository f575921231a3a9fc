"""Step checkpoints written sync, async (a thread) and async_process (a saver process) hold the same bytes
of state, load in any mode, and async saves stage into reused host buffers (pinned only where CUDA is)."""

import shutil
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from tests.train_helpers import losses, run_training

MODES = ("sync", "async", "async_process")


@pytest.fixture(scope="module")
def saved(prepared_data, tmp_path_factory):
    """The same 4-step run in each mode, checkpointing at step 2 and 4."""
    root = tmp_path_factory.mktemp("modes")
    for mode in MODES:
        run_training(root / mode, prepared_data, "trainer.max_steps=4", "checkpoint.every=2", f"checkpoint.mode={mode}")
    return root


def state(run_dir, step, tmp_path):
    out = tmp_path / f"{run_dir.name}-{step}.pt"
    dcp_to_torch_save(run_dir / "checkpoints" / f"step_{step:08d}", out)
    return torch.load(out, weights_only=False)


@pytest.mark.slow
@pytest.mark.parametrize("step", [2, pytest.param(4, marks=pytest.mark.heavy)])
def test_every_mode_writes_the_same_state(saved, tmp_path, step):
    reference = state(saved / "sync", step, tmp_path)
    for mode in MODES[1:]:
        other = state(saved / mode, step, tmp_path)
        assert sorted(other) == sorted(reference) == ["model", "optim"]
        for name, tensor in reference["model"].items():
            assert torch.equal(other["model"][name], tensor), (mode, name)
        assert any(key.endswith(".exp_avg") for key in reference["optim"])  # flat: state.<parameter>.<moment>
        for key, value in reference["optim"].items():  # AdamW's moments and step counts, and the group settings
            assert torch.equal(other["optim"][key], value) if isinstance(value, torch.Tensor) else other["optim"][key] == value, (mode, key)


@pytest.mark.slow
@pytest.mark.parametrize("written, resumed", [pytest.param("async", "sync", marks=pytest.mark.heavy), ("async_process", "async"), ("sync", "async_process")])
def test_a_checkpoint_resumes_in_another_mode(saved, prepared_data, tmp_path, written, resumed):
    """Step 2's checkpoint of one mode continues in another to the same losses as the uninterrupted run."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(saved / written / "checkpoints" / "step_00000002", run_dir / "checkpoints" / "step_00000002")
    result = run_training(run_dir, prepared_data, "trainer.max_steps=4", "checkpoint.every=2", f"checkpoint.mode={resumed}")
    assert "resumed from" in result.stdout
    assert {s: v for s, v in losses(run_dir).items() if s > 2} == {s: v for s, v in losses(saved / written).items() if s > 2}


def test_staging_buffers_are_pinned_only_with_cuda(monkeypatch):
    from torch.distributed.checkpoint import staging

    from train import checkpoint

    chosen = []
    monkeypatch.setattr(checkpoint, "DefaultStager", lambda options: chosen.append(options) or staging.DefaultStager(
        staging.StagingOptions(False, options.use_shared_memory, options.use_async_staging, False)))

    class Dims:
        world_size, checkpoint_group = 1, None

    for mode, device in (("async", "cpu"), ("async_process", "cpu"), ("async", "cuda"), ("async_process", "cuda")):
        config = checkpoint.CheckpointConfig(mode=mode)
        checkpoint.Checkpointer(Path("/nonexistent"), config, 0, Dims, {}, {}, torch.device(device)).close()
    cpu_thread, cpu_process, cuda_thread, cuda_process = chosen
    assert not cpu_thread.use_pinned_memory and not cpu_thread.use_non_blocking_copy and not cpu_thread.use_shared_memory
    assert cpu_process.use_shared_memory and not cpu_process.use_pinned_memory
    assert cuda_thread.use_pinned_memory and cuda_thread.use_non_blocking_copy and cuda_process.use_shared_memory
    assert all(options.use_async_staging for options in chosen)
    checkpoint.Checkpointer(Path("/nonexistent"), checkpoint.CheckpointConfig(mode="sync"), 0,
                            Dims, {}, {}, torch.device("cpu")).close()
    assert len(chosen) == 4  # a sync checkpointer stages nothing
