"""Pipeline parallelism (train/parallel/pipeline.py). Fast: every layout the pipeline cannot run is refused
with its keys and numbers, and the stages' copies of the model keep the whole model's parameter names.

Slow (heavy): the Trainer runs each layout for 10 steps (tiny Llama, and tiny Qwen3-MoE, 2 or 4 layers, with
a balancing loss and the router-bias update; fp32, 64-token windows, 8 per step, 4 micro-batches per rank
and step) and must give one process's losses, first-step gradients, validation loss and final model: pp2,
pp2 x dp2, tp2 x pp2 and cp2 x pp2; MoE with 1F1B and an uneven split, Interleaved1F1B and ZBVZeroBubble
(two stages per rank);
a pp2 x dp2 checkpoint resumes as dp4 and as one process, a tp2 x dp2 one as pp2 x dp2, with the same
next losses and the data stream's exact position. One spawn per world size runs its layouts one after
another (4 ranks: 7 runs, 1 rank: 4, 2 ranks: 5), about 4 minutes on 2 cores shared with other jobs.
"""

import pytest
import torch

from tests.train_helpers import consumed_indices, first_gradients, losses, metrics, run_layouts, spawn
from train.config import ParallelConfig
from train.model import build_model, load_preset
from train.model.config import apply_overrides
from train.parallel.pipeline import check_pipeline, split_stages

ROUTER = "model.ffns.moe.moe.router"
# balancing per sequence (per micro-batch it would depend on how the ranks split a batch), and the
# aux-loss-free bias update from the loads of all stages and ranks
MOE = ["model=qwen3_moe_tiny", f"{ROUTER}.aux_loss_kind=sequence", f"{ROUTER}.score_correction_bias=true",
       f"{ROUTER}.bias_update_speed=0.01"]
DEEP = [*MOE, "model.num_layers=4"]  # two stages per rank on two ranks, MoE layers in each
SAVED = ["checkpoint.every=5", "checkpoint.keep=3", "trainer.record_samples=true"]
PP2 = ["parallel.pp=2"]
# (run name, overrides, the run whose step-5 checkpoint it resumes from), per world size
RUNS = {
    4: [("pp2-dp2", [*PP2, *SAVED], None),
        ("moe-pp2-dp2", [*MOE, *PP2], None),
        ("tp2-pp2", [*PP2, "parallel.tp=2"], None),
        ("cp2-pp2", [*PP2, "parallel.cp=2"], None),
        ("tp2-dp2", ["parallel.tp=2", *SAVED], None),
        ("resume-dp4", ["trainer.record_samples=true"], "pp2-dp2"),
        ("resume-pp2-dp2", [*PP2, "trainer.record_samples=true"], "tp2-dp2")],
    1: [("dense", [], None), ("moe", MOE, None), ("deep", DEEP, None),
        ("resume-one", ["trainer.record_samples=true"], "pp2-dp2")],
    2: [("pp2", PP2, None),
        ("moe-pp2", [*MOE, *PP2], None),
        ("deep-uneven", [*DEEP, *PP2, "parallel.pp_layers=[1,3]"], None),
        ("deep-interleaved", [*DEEP, *PP2, "parallel.pp_schedule=Interleaved1F1B"], None),
        ("deep-zbv", [*DEEP, *PP2, "parallel.pp_schedule=ZBVZeroBubble", "parallel.reshard_after_forward=false"], None)],
}
REFERENCE = {"pp2-dp2": "dense", "moe-pp2-dp2": "moe", "tp2-pp2": "dense", "cp2-pp2": "dense", "pp2": "dense", "moe-pp2": "moe",
             "deep-uneven": "deep", "deep-interleaved": "deep", "deep-zbv": "deep"}
RESUMES = {"resume-dp4": "pp2-dp2", "resume-one": "pp2-dp2", "resume-pp2-dp2": "tp2-dp2"}


def parallel(**sizes) -> ParallelConfig:
    return ParallelConfig(**{"pp": 2, **sizes})


@pytest.mark.parametrize("preset,overrides,sizes,stage,micro_batches,message", [
    ("llama3_tiny", {"num_layers": 3}, {}, "pretrain", 4,
     r"model.num_layers=3 does not split evenly into 2 stages \(parallel.pp=2 x 1 per rank\); .* parallel.pp_layers=\[2,1\]"),
    ("llama3_tiny", {"num_layers": 4}, dict(pp_layers=[1, 2]), "pretrain", 4,
     r"parallel.pp_layers=\[1, 2\] must give 2 stages .* model.num_layers=4 in all"),
    ("llama3_tiny", {}, dict(pp_schedule="2F2B"), "pretrain", 4, r"parallel.pp_schedule='2F2B'; use one of GPipe, 1F1B"),
    ("llama3_tiny", {"num_layers": 4}, dict(pp_stages_per_rank=2), "pretrain", 4,
     r"parallel.pp_schedule=1F1B runs one stage per rank, not parallel.pp_stages_per_rank=2"),
    ("llama3_tiny", {"num_layers": 4}, dict(pp_schedule="ZBVZeroBubble"), "pretrain", 4,
     r"parallel.pp_schedule=ZBVZeroBubble needs parallel.reshard_after_forward=false"),
    ("llama3_tiny", {}, {}, "pretrain", 1, r"1 micro-batch\(es\) per rank and step .*parallel.pp_schedule=1F1B with parallel.pp=2 needs at least 2"),
    ("llama3_2_1b_tiny", {}, {}, "pretrain", 4, r"model.tie_embeddings=true with parallel.pp=2"),
    ("llama3_tiny", {"mtp.depth": 1}, {}, "pretrain", 4, r"model.mtp and model.residual .* parallel.pp=2"),
    ("llama3_tiny", {}, {}, "dpo", 4, r"stage=dpo with parallel.pp=2"),
    ("llama3_tiny", {"num_layers": 4}, dict(pp_schedule="DualPipeV", reshard_after_forward=False), "pretrain", 3, r"3 micro-batch\(es\) .*parallel.pp_schedule=DualPipeV with parallel.pp=2 needs at least 4"),
])
def test_layouts_the_pipeline_cannot_run_are_refused(preset, overrides, sizes, stage, micro_batches, message):
    model = apply_overrides(load_preset(preset), overrides)
    with pytest.raises(ValueError, match=message):
        check_pipeline(parallel(**sizes), model, stage, micro_batches)


@pytest.mark.parametrize("sizes,stages,layers_of_rank", [
    (dict(pp_layers=[1, 3]), 2, [[0], [1, 2, 3]]),
    (dict(pp_schedule="Interleaved1F1B"), 4, [[0, 2], [1, 3]]),  # looped: stages r and r + pp
    (dict(pp_schedule="ZBVZeroBubble"), 4, [[0, 3], [1, 2]]),  # V: stages r and 2pp - 1 - r
])
def test_each_stage_holds_its_layers_under_the_whole_models_names(sizes, stages, layers_of_rank):
    torch.manual_seed(0)
    model = build_model("llama3_tiny", num_layers=4)
    whole, held = dict(model.named_parameters()), {}
    for rank, layers in enumerate(layers_of_rank):
        parts = split_stages(model, parallel(**sizes), rank)
        assert sorted(i for _, part in parts for i, _ in part.layers.indexed()) == layers
        for stage, part in parts:  # the embedding with the first stage, the head with the last
            assert (part.embed is not None, part.output is not None) == (stage == 0, stage == stages - 1)
            held.update(part.named_parameters())
    assert held.keys() == whole.keys()  # each parameter on one stage, under its own name
    assert all(torch.equal(held[name], whole[name]) for name in whole)


def pipeline_worker(rank, world, port, data, out):
    import torch.distributed as dist

    run_layouts(rank, world, port, RUNS[world], data, out, "trainer.max_steps=10")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(prepared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    for world in (4, 1, 2):  # the 4-rank spawn writes the checkpoints the one-process resume reads
        spawn(pipeline_worker, world, prepared_data, str(out))
    return out


@pytest.mark.slow
@pytest.mark.heavy
@pytest.mark.parametrize("name", list(REFERENCE))
def test_pipeline_layout_gives_the_losses_gradients_and_model_of_one_process(results, name):
    from train.model import load_model

    reference, layout = losses(results / REFERENCE[name]), losses(results / name)
    assert sorted(layout) == list(range(1, 11))
    for step, loss in reference.items():
        assert layout[step] == pytest.approx(loss, rel=1e-5), (name, step)
    assert reference[10] < reference[1] - 0.3  # it learns
    val = [{r["step"]: r["val_loss"] for r in metrics(results / run) if "val_loss" in r} for run in (REFERENCE[name], name)]
    assert val[1] == pytest.approx(val[0], rel=1e-5) and val[0]
    expected, got = first_gradients(results / REFERENCE[name]), first_gradients(results / name)
    assert got.keys() == expected.keys()
    for key, grad in expected.items():
        torch.testing.assert_close(got[key], grad, rtol=1e-4, atol=1e-6 * grad.abs().max().item(), msg=key)
    # the final model folder gathers every stage's weights: whole, under their names (AdamW turns gradients
    # near zero into steps of either sign, so rarely seen embedding rows may differ by ~1e-4 after 10 steps)
    one, staged = load_model(results / REFERENCE[name] / "model").state_dict(), load_model(results / name / "model").state_dict()
    assert staged.keys() == one.keys()
    for key, tensor in one.items():
        torch.testing.assert_close(staged[key], tensor, rtol=1e-3, atol=2e-4, msg=key)


@pytest.mark.slow
@pytest.mark.heavy
@pytest.mark.parametrize("name", list(RESUMES))
def test_checkpoints_resume_across_pipeline_layouts(results, name):
    reference, resumed = losses(results / "dense"), losses(results / name)
    assert sorted(resumed) == list(range(6, 11))  # steps 1-5 came from the checkpoint
    for step, loss in resumed.items():
        assert loss == pytest.approx(reference[step], rel=1e-5), (name, step)
    seen = consumed_indices(results / RESUMES[name], last_step=5) + consumed_indices(results / name)
    assert sorted(seen) == list(range(10 * 8))  # none twice, none skipped
