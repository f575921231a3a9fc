"""Expert parallelism (`parallel.ep`) in the trainer, on 2 and 4 gloo ranks against one process:
equal losses, exact resumes (also on another ep and world size), and the exported model with all experts.

The MoE presets use the Switch/global-batch balancing loss, whose expert fractions count only the
micro-batches of one rank: on N ranks it is a different loss than on one process (also with ep=1:
~4e-4 relative after 20 steps). These tests use its per-sequence form (DeepSeek-V3 eq. 17-20), which
every layout computes alike, so that any difference left would come from expert parallelism.
"""

import shutil

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from train.model import build_model, load_preset
from train.parallel.dims import ParallelDims
from train.parallel.expert import apply_expert_parallel
from tests.train_helpers import losses, metrics, run_training

MOE = ["model=qwen3_moe_tiny", "model.ffns.moe.moe.router.aux_loss_kind=sequence", "trainer.deterministic=true"]


def final_weights(run_dir, step, tmp_path):
    out = tmp_path / f"{run_dir.name}-{step}.pt"
    dcp_to_torch_save(run_dir / "checkpoints" / f"step_{step:08d}", out)
    return torch.load(out, weights_only=False)["model"]


def assert_same_losses(a, b, steps):
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-5), step


@pytest.fixture(scope="module")
def one_process(prepared_data, tmp_path_factory):
    """The reference: 20 steps of qwen3_moe_tiny on one process (ep=1)."""
    run_dir = tmp_path_factory.mktemp("reference") / "one"
    run_training(run_dir, prepared_data, *MOE, "trainer.max_steps=20")
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("nproc,ep,replicate", [(2, 2, 1), pytest.param(4, 2, 1, marks=pytest.mark.heavy), pytest.param(4, 4, 1, marks=pytest.mark.heavy), pytest.param(4, 2, 2, marks=pytest.mark.heavy)],
                         ids=["2ranks-ep2", "4ranks-ep2", "4ranks-ep4", "4ranks-hsdp2x2-ep2"])
def test_expert_parallel_equals_one_process(prepared_data, one_process, tmp_path, nproc, ep, replicate):
    """Experts over edp = world / ep ranks; dense weights over the (replicate, shard) mesh (HSDP when replicate > 1)."""
    run_dir = tmp_path / "ep"
    result = run_training(run_dir, prepared_data, *MOE, "trainer.max_steps=20", f"parallel.ep={ep}",
                          f"parallel.dp_replicate={replicate}", nproc=nproc)
    a = losses(one_process)
    assert_same_losses(a, losses(run_dir), 20)
    assert a[20] < a[1] - 0.5  # it learns
    # AdamW hides a constant factor on the expert gradients from the losses, not from the global norm
    norms = [[r["grad_norm"] for r in metrics(d) if "grad_norm" in r] for d in (one_process, run_dir)]
    assert norms[1] == pytest.approx(norms[0], rel=1e-4)
    assert "load cv" in result.stdout  # the MoE metrics still come from all ranks' loads


@pytest.mark.slow
@pytest.mark.heavy
def test_zero_computation_experts_with_expert_parallel(prepared_data, tmp_path):
    """LongCat-Flash: a shortcut MoE with zero-computation experts (they never leave the rank) and the
    aux-loss-free router bias, updated from the global loads. Its sign-rule bias step turns rounding
    differences into routing changes: 2 ranks differ from one process by ~1e-3 already with ep=1 (and
    one process differs from itself without trainer.deterministic), so ep=2 is compared with ep=1 on
    the same 2 ranks."""
    common = ["model=longcat_flash_tiny", "trainer.max_steps=8", "trainer.deterministic=true"]
    run_training(tmp_path / "ep1", prepared_data, *common, nproc=2)
    run_training(tmp_path / "ep2", prepared_data, *common, "parallel.ep=2", nproc=2)
    assert_same_losses(losses(tmp_path / "ep1"), losses(tmp_path / "ep2"), 8)


@pytest.mark.slow
def test_expert_parallel_checkpoint_resumes_exactly_and_on_one_process(prepared_data, tmp_path):
    """2 ranks ep=2 to step 6, then on to 12 on the same layout and, from a copy of the step-6
    checkpoint, on one process (ep=1): both equal an uninterrupted run. The checkpoint holds every
    expert tensor whole ([E, ...], the same format as ep=1), so DCP reshards it to any layout."""
    common = [*MOE, "optim.schedule=constant", "trainer.deterministic=true"]  # steps 1-6 independent of max_steps
    whole, resumed, other = tmp_path / "whole", tmp_path / "resumed", tmp_path / "other"
    run_training(whole, prepared_data, *common, "trainer.max_steps=12", "parallel.ep=2", nproc=2)
    run_training(resumed, prepared_data, *common, "trainer.max_steps=6", "parallel.ep=2", nproc=2)
    shutil.copytree(resumed, other)
    result = run_training(resumed, prepared_data, *common, "trainer.max_steps=12", "parallel.ep=2", nproc=2)
    assert "resumed from" in result.stdout and "step_00000006" in result.stdout
    assert losses(resumed) == losses(whole)  # bit for bit on the same layout
    result = run_training(other, prepared_data, *common, "trainer.max_steps=12")
    assert "resumed from" in result.stdout and "step_00000006" in result.stdout
    assert_same_losses(losses(whole), losses(other), 12)


@pytest.mark.slow
@pytest.mark.heavy
def test_hsdp_expert_parallel_checkpoint_resumes_on_another_layout(prepared_data, tmp_path):
    """4 ranks, HSDP 2x2 with ep=2, to step 6; resumed on 2 ranks (ep=2, plain FSDP) to step 12: the
    losses of an uninterrupted 2-rank run (the dense shards of a 2-D mesh and the whole experts reload)."""
    common = [*MOE, "optim.schedule=constant", "trainer.deterministic=true", "parallel.ep=2"]
    whole, moved = tmp_path / "whole", tmp_path / "moved"
    run_training(whole, prepared_data, *common, "trainer.max_steps=12", nproc=2)
    run_training(moved, prepared_data, *common, "trainer.max_steps=6", "parallel.dp_replicate=2", nproc=4)
    result = run_training(moved, prepared_data, *common, "trainer.max_steps=12", nproc=2)
    assert "resumed from" in result.stdout and "step_00000006" in result.stdout
    assert_same_losses(losses(whole), losses(moved), 12)


@pytest.mark.slow
def test_exported_model_holds_all_experts(prepared_data, tmp_path):
    from train.model import load_model

    common = [*MOE, "trainer.max_steps=4"]
    run_training(tmp_path / "one", prepared_data, *common)
    run_training(tmp_path / "ep", prepared_data, *common, "parallel.ep=2", nproc=2)
    exported = load_model(tmp_path / "ep" / "model")
    assert [m.experts.w1_EFD.shape[0] for m in exported.moe_layers()] == [8, 8]
    exported = exported.state_dict()
    saved = final_weights(tmp_path / "ep", 4, tmp_path)  # the checkpoint holds the same whole experts
    reference = load_model(tmp_path / "one" / "model").state_dict()
    assert exported.keys() == saved.keys() == reference.keys()
    for name in saved:
        assert torch.equal(exported[name], saved[name]), name
        torch.testing.assert_close(exported[name], reference[name], rtol=0, atol=1e-5, msg=name)
    assert (tmp_path / "ep" / "model" / "tokenizer.json").is_file()


def test_expert_parallel_settings_are_checked():
    with torch.device("meta"):
        dense = build_model("llama3_tiny")
    ParallelDims(1, 4, 2, 4, "cpu").validate()
    ParallelDims(2, 2, 4, 4, "cpu").validate()  # HSDP: ep divides replicate x shard
    with pytest.raises(ValueError, match=r"parallel.ep=3 must .* divide the data-parallel size 4"):
        ParallelDims(1, 4, 3, 4, "cpu").validate()
    with pytest.raises(ValueError, match=r"parallel.dp_replicate=2 x parallel.dp_shard=3 != world size 4"):
        ParallelDims(2, 3, 1, 4, "cpu").validate()
    with pytest.raises(ValueError, match=r"parallel.ep=2 needs a model with MoE layers"):
        ParallelDims(1, 2, 2, 2, "cpu").check_model(load_preset("llama3_tiny"))
    with pytest.raises(ValueError, match=r"8 experts cannot be split over parallel.ep=3"):
        ParallelDims(1, 3, 3, 3, "cpu").check_model(load_preset("qwen3_moe_tiny"))
    with pytest.raises(ValueError, match=r"parallel.ep=2 needs a model with MoE layers"):
        apply_expert_parallel(dense, ParallelDims(1, 2, 2, 2, "cpu"))
