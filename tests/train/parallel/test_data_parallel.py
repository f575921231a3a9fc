"""Pre-training on 1, 2 and 4 gloo ranks: equal losses, resharded resumes. (A killed rank's exact elastic
restart is tests/faults/test_kill.py's.)"""


import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from tests.train_helpers import consumed_indices, losses, metrics, run_training

pytestmark = pytest.mark.slow


def final_weights(run_dir, step, tmp_path):
    out = tmp_path / f"{run_dir.name}-{step}.pt"
    dcp_to_torch_save(run_dir / "checkpoints" / f"step_{step:08d}", out)
    return torch.load(out, weights_only=False)["model"]


@pytest.mark.parametrize("nproc,layout", [(2, []), (4, ["parallel.dp_replicate=2", "parallel.dp_shard=2"]),
                                          (2, ["parallel.reshard_after_forward=false"])],
                         ids=["fsdp-2", "hsdp-2x2", "fsdp-2-keep-gathered"])
def test_sharded_ranks_equal_one_process(prepared_data, tmp_path, nproc, layout):
    one, two = tmp_path / "one", tmp_path / "many"
    # 9 validation samples: ranks hold unequal shares, and must still run the same number of forwards
    run_training(one, prepared_data, "trainer.max_steps=20", "trainer.val_samples=9")
    run_training(two, prepared_data, "trainer.max_steps=20", "trainer.val_samples=9", *layout, nproc=nproc)
    val = [[r["val_loss"] for r in metrics(d) if "val_loss" in r] for d in (one, two)]
    assert len(val[0]) == 1 and val[1] == pytest.approx(val[0], rel=1e-5)
    a, b = losses(one), losses(two)
    assert sorted(a) == list(range(1, 21)) and sorted(b) == sorted(a)
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-5), step
    assert a[20] < a[1] - 0.5  # it learns


@pytest.mark.parametrize("resume_ranks", [pytest.param(1, marks=pytest.mark.heavy), 4])
def test_checkpoint_of_two_ranks_resumes_on_other_world_sizes(prepared_data, tmp_path, resume_ranks):
    run_dir = tmp_path / "run"
    run_training(run_dir, prepared_data, "trainer.max_steps=6", "trainer.record_samples=true", nproc=2)
    first = losses(run_dir)
    run_training(run_dir, prepared_data, "trainer.max_steps=12", "trainer.record_samples=true", nproc=resume_ranks)
    indices = consumed_indices(run_dir)
    assert sorted(indices) == list(range(12 * 8))  # 12 steps x 8 sequences: none twice, none skipped
    after = losses(run_dir)
    assert {s: after[s] for s in first} == first and max(after) == 12


def test_one_process_and_two_ranks_resume_each_others_checkpoints(prepared_data, tmp_path):
    """One process trains the plain model, two ranks through FSDP2 (train/parallel/fsdp.py): each resumes the
    other's checkpoint (whole tensors <-> DTensor shards, the AdamW moments too) with an unbroken run's losses."""
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    constant = "optim.schedule=constant"  # the same learning rates whatever trainer.max_steps each part has
    run_training(whole, prepared_data, "trainer.max_steps=6", constant)
    for steps, nproc in ((2, 1), (4, 2), (6, 1)):
        run_training(resumed, prepared_data, f"trainer.max_steps={steps}", constant, nproc=nproc)
    expected, got = losses(whole), losses(resumed)
    assert sorted(got) == list(range(1, 7))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-5), step


def test_cut_off_checkpoint_is_ignored(prepared_data, tmp_path):
    run_dir = tmp_path / "run"
    run_training(run_dir, prepared_data, "trainer.max_steps=10", "checkpoint.every=5", "checkpoint.keep=3")
    cut = run_dir / "checkpoints" / "step_00000010"
    (cut / ".metadata").unlink()  # as if the save had been killed before DCP finished
    result = run_training(run_dir, prepared_data, "trainer.max_steps=12", "checkpoint.every=5")
    assert "resumed from" in result.stdout and "step_00000005" in result.stdout
    assert sorted(losses(run_dir)) == list(range(1, 13))
    assert (run_dir / "checkpoints" / "step_00000012" / ".metadata").is_file()


@pytest.mark.heavy
def test_keeps_the_last_k_checkpoints(prepared_data, tmp_path):
    run_dir = tmp_path / "run"
    run_training(run_dir, prepared_data, "trainer.max_steps=8", "checkpoint.every=2", "checkpoint.keep=2",
                 "checkpoint.mode=async")
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_00000006", "step_00000008"]


@pytest.mark.heavy
def test_final_model_folder_holds_the_checkpoint_weights(prepared_data, tmp_path):
    from train.model import load_model

    run_dir = tmp_path / "run"
    run_training(run_dir, prepared_data, "trainer.max_steps=4", "parallel.activation_checkpointing=selective", nproc=2)
    exported = load_model(run_dir / "model").state_dict()
    saved = final_weights(run_dir, 4, tmp_path)
    assert exported.keys() == saved.keys()
    for name in saved:
        assert torch.equal(exported[name], saved[name]), name
    assert (run_dir / "model" / "tokenizer.json").is_file()
