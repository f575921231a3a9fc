"""Tensor (+sequence) and context parallelism, alone, together and with FSDP and expert parallelism, against
one process: the Trainer itself runs each layout for 10 steps (tiny Llama and Qwen3-MoE, fp32, 64-token
windows, 8 per step; the linear mixers under CP: the Qwen3-Next hybrid with Gated DeltaNet at cp2, Mamba2
at cp2 x dp2; MLA under TP: DeepSeek-V3 at tp2) and must give the same losses and the same first-step
gradients; a checkpoint saved as tp2 x dp2 resumes as dp4 and as one process with the same next losses and
the data stream's exact position; CP with document masks and a sliding window equals the whole-window
model (outputs and gradients; softmax attention and MLA; the linear mixers' own check is
test_mixer_splits.py).

Each world size is one spawn whose processes run all its layouts one after another (the imports are paid
once): 4 ranks (7 runs and reading initial weights under tp2 x dp2), 1 rank (the references and a resume),
2 ranks (4 runs and the CP check): all in the module's fixture, shared by the tests below. About 12 minutes
on 2 cores shared with other jobs at load ~25; 4.9 minutes at load 4-7 with the Qwen3-Next, Mamba2 and
DeepSeek-V3 runs, which with their references take about 1.5 of them.
"""

from pathlib import Path

import pytest
import torch

from tests.train_helpers import consumed_indices, first_gradients, losses, run_layouts, spawn

pytestmark = [pytest.mark.slow, pytest.mark.heavy]

STEPS = ["trainer.max_steps=10"]
ROUTER = "model.ffns.moe.moe.router"
# the balancing loss per sequence: per micro-batch (global_batch) it would depend on how the ranks split a batch
MOE = ["model=qwen3_moe_tiny", f"{ROUTER}.aux_loss_kind=sequence"]
# under CP each rank's router sees half of each sequence: balancing by the bias alone (DeepSeek-V3's
# aux-loss-free update, from the loads summed over all ranks)
MOE_AUX_FREE = ["model=qwen3_moe_tiny", f"{ROUTER}.aux_loss_coef=0", f"{ROUTER}.score_correction_bias=true",
                f"{ROUTER}.bias_update_speed=0.01"]
QWEN3_NEXT_AUX_FREE = ["model=qwen3_next_tiny", *MOE_AUX_FREE[1:]]  # Gated DeltaNet, attention, MoE
SAVED = ["checkpoint.every=5", "checkpoint.keep=3", "trainer.record_samples=true"]
RESUME = "tp2-dp2"  # the run whose step-5 checkpoint the resumes start from
# (run name, overrides, the run whose step-5 checkpoint it resumes from), per world size
RUNS = {
    4: [("tp2-dp2", ["parallel.tp=2", *SAVED], None),
        ("cp2-dp2", ["parallel.cp=2"], None),
        ("tp2-cp2", ["parallel.tp=2", "parallel.cp=2"], None),
        ("moe-tp2-dp2", [*MOE, "parallel.tp=2"], None),
        ("moe-cp2-ep2", [*MOE_AUX_FREE, "parallel.cp=2", "parallel.ep=2"], None),
        ("mamba2-cp2-dp2", ["model=mamba2_tiny", "parallel.cp=2"], None),
        ("resume-dp4", ["trainer.record_samples=true"], RESUME)],
    1: [("dense", [], None), ("moe", MOE, None), ("moe-aux-free", MOE_AUX_FREE, None),
        ("qwen3-next", QWEN3_NEXT_AUX_FREE, None), ("mamba2", ["model=mamba2_tiny"], None),
        ("mla", ["model=deepseek_v3_tiny"], None), ("resume-one", ["trainer.record_samples=true"], RESUME)],
    2: [("tp2", ["parallel.tp=2"], None), ("cp2", ["parallel.cp=2"], None),
        ("qwen3-next-cp2", [*QWEN3_NEXT_AUX_FREE, "parallel.cp=2"], None),
        ("mla-tp2", ["model=deepseek_v3_tiny", "parallel.tp=2"], None)],
}
# each layout's one-process run (the same settings but the parallel.* ones)
REFERENCE = {"tp2-dp2": "dense", "cp2-dp2": "dense", "tp2-cp2": "dense", "moe-tp2-dp2": "moe",
             "moe-cp2-ep2": "moe-aux-free", "mamba2-cp2-dp2": "mamba2", "tp2": "dense", "cp2": "dense",
             "qwen3-next-cp2": "qwen3-next", "mla-tp2": "mla"}


def layouts_worker(rank, world, port, data, out, cp_check):
    import torch.distributed as dist

    run_layouts(rank, world, port, RUNS[world], data, out, *STEPS)
    if world == 4:
        check_initial_weights_read_under_tp(rank, Path(out))
    if cp_check:
        check_context_parallel_attention(rank, Path(out))
    dist.destroy_process_group()


def check_initial_weights_read_under_tp(rank, out):
    """init.weights under tp2 x dp2: each rank reads its shards of a model folder (2-D DTensors, the FSDP
    shard inside the TP one) and they are the folder's weights."""
    from torch.distributed.tensor import DTensor

    from train.config import ParallelConfig
    from train.model import load_model
    from train.model.load import model_config
    from train.model.transformer import Transformer
    from train.parallel.dims import ParallelDims
    from train.parallel.fsdp import parallelize, read_local_shards
    from train.parallel.world import World

    folder = out / RESUME / "model"
    config, parallel = model_config(folder), ParallelConfig(tp=2, param_dtype="fp32")
    dims = ParallelDims.build(parallel, World(rank, rank, 4, torch.device("cpu")), config)
    with torch.device("meta"):
        model = parallelize(Transformer(config), parallel, dims)
    model.to_empty(device="cpu")
    read_local_shards(model, str(folder), config)
    expected = load_model(folder).state_dict()
    errors = {n: (p.full_tensor() if isinstance(p, DTensor) else p).sub(expected[n]).abs().max().item()
              for n, p in model.state_dict().items()}
    torch.save(errors, out / f"init_check_{rank}.pt")


def check_context_parallel_attention(rank, out):
    """Softmax attention (sliding window of 12) and MLA over packed documents, each window split over the
    2 ranks: this rank's outputs and the summed parameter gradients equal the whole-window model's."""
    import torch.distributed as dist

    from train.model import build_model
    from train.parallel.context import ZigZagSplit

    errors = {}
    for preset, overrides in (("llama3_tiny", {"mixers.full.attention.window": 12}), ("deepseek_v3_tiny", {})):
        torch.manual_seed(0)
        model = build_model(preset, vocab_size=128, **overrides)
        B, T = 2, 32
        ids_BT = torch.randint(0, 128, (B, T), generator=torch.Generator().manual_seed(1))
        starts_BT = torch.rand(B, T, generator=torch.Generator().manual_seed(2)) < 0.15
        doc_ids_BT = starts_BT.long().cumsum(dim=1)
        reference_BTD = model.hidden_states(ids_BT, doc_ids_BT)
        cotangent_BTD = torch.randn(reference_BTD.shape, generator=torch.Generator().manual_seed(3))
        (reference_BTD * cotangent_BTD).sum().backward()
        reference_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        split = model.sequence_split = ZigZagSplit(dist.group.WORLD)
        local_BTD = model.hidden_states(split.shard(ids_BT), split.shard(doc_ids_BT))
        (local_BTD * split.shard(cotangent_BTD)).sum().backward()
        errors[f"{preset} output"] = (local_BTD - split.shard(reference_BTD.detach())).abs().max().item()
        for name, grad in reference_grads.items():
            summed = model.get_parameter(name).grad.clone()
            dist.all_reduce(summed)
            errors[f"{preset} grad {name}"] = ((summed - grad).abs().max() / grad.abs().max().clamp(min=1e-12)).item()
    torch.save(errors, out / f"cp_check_{rank}.pt")


@pytest.fixture(scope="module")
def results(prepared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("layouts")
    for world in (4, 1, 2):  # the 4-rank spawn writes the checkpoint the one-process resume reads
        spawn(layouts_worker, world, prepared_data, str(out), world == 2)
    return out


@pytest.mark.parametrize("name", list(REFERENCE))
def test_layout_gives_the_losses_and_gradients_of_one_process(results, name):
    reference, layout = losses(results / REFERENCE[name]), losses(results / name)
    assert sorted(layout) == list(range(1, 11))
    for step, loss in reference.items():
        assert layout[step] == pytest.approx(loss, rel=1e-5), (name, step)
    assert reference[10] < reference[1] - 0.3  # it learns
    expected, got = first_gradients(results / REFERENCE[name]), first_gradients(results / name)
    assert got.keys() == expected.keys()
    for key, grad in expected.items():
        torch.testing.assert_close(got[key], grad, rtol=1e-4, atol=1e-6 * grad.abs().max().item(), msg=key)


@pytest.mark.parametrize("name", ["resume-dp4", "resume-one"])
def test_tp_dp_checkpoint_resumes_on_other_layouts(results, name):
    reference, resumed = losses(results / "dense"), losses(results / name)
    assert sorted(resumed) == list(range(6, 11))  # steps 1-5 came from the checkpoint
    for step, loss in resumed.items():
        assert loss == pytest.approx(reference[step], rel=1e-5), (name, step)
    seen = consumed_indices(results / RESUME, last_step=5) + consumed_indices(results / name)
    assert sorted(seen) == list(range(10 * 8))  # none twice, none skipped


def test_initial_weights_are_read_shard_by_shard_under_tp(results):
    for rank in range(4):
        errors = torch.load(results / f"init_check_{rank}.pt")
        assert errors and max(errors.values()) == 0, (rank, errors)


def test_context_parallel_attention_with_documents_and_windows_equals_the_whole_window(results):
    for rank in range(2):
        for what, error in torch.load(results / f"cp_check_{rank}.pt").items():
            assert error < 1e-5, (rank, what, error)


def test_midtraining_with_context_parallelism_equals_one_process(prepared_data, tmp_path):
    """`python -m train stage=midtrain ... parallel.cp=2` (torchrun, 2 ranks) from a pre-trained model folder:
    the initial weights read shard by shard over the (dp_shard, cp) mesh, YaRN positions of whole windows;
    the losses of one process (about 2 minutes on 2 busy cores)."""
    from tests.train_helpers import run_training

    run_training(tmp_path / "pretrain", prepared_data, "trainer.max_steps=2")
    midtrain = ["stage=midtrain", f"init.weights={tmp_path / 'pretrain' / 'model'}", "data.seq_len=128",
                "trainer.max_steps=3"]
    run_training(tmp_path / "one", prepared_data, *midtrain)
    result = run_training(tmp_path / "cp", prepared_data, *midtrain, "parallel.cp=2", nproc=2)
    assert "2 rank(s): cp 2" in result.stdout
    one, cp = losses(tmp_path / "one"), losses(tmp_path / "cp")
    assert sorted(cp) == [1, 2, 3] and all(cp[step] == pytest.approx(one[step], rel=1e-5) for step in one)
    assert "kind: yarn" in (tmp_path / "cp" / "model" / "model.yaml").read_text()
