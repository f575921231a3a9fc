"""ParallelDims refuses every layout that does not divide out, before any process group exists, with a
message naming the keys and the numbers (no processes needed)."""

import pytest

from train.config import ParallelConfig
from train.model import load_preset
from train.model.config import apply_overrides
from train.parallel.dims import ParallelDims


def dims(world: int, **sizes) -> ParallelDims:
    return ParallelDims.resolve(ParallelConfig(**sizes), world)


def test_the_data_parallel_ranks_are_what_tp_and_cp_leave():
    d = dims(8, tp=2, cp=2)
    assert (d.dp_replicate, d.dp_shard, d.cp, d.tp) == (1, 2, 2, 2)
    assert (d.dp_size, d.grad_divisor, d.sample_copies, d.seq_len_divisor) == (2, 4, 4, 8)
    assert dims(8, dp_replicate=2, tp=2).dp_shard == 2
    assert dims(4, cp=2, ep=4).ep == 4  # expert parallelism borrows the context ranks too
    assert "dp_shard 2 x cp 2 x tp 2" in d.describe()
    staged = dims(8, pp=2, tp=2)  # pipeline ranks read the same samples, like tp's
    assert (staged.dp_shard, staged.dp_size, staged.sample_copies) == (2, 2, 4)
    assert "pp 2 x dp_shard 2 x tp 2" in staged.describe()


@pytest.mark.parametrize("world,sizes,message", [
    (4, dict(tp=3), r"parallel.dp_replicate=1 x parallel.dp_shard=1 x parallel.tp=3 != world size 4"),
    (8, dict(dp_shard=2, cp=2), r"parallel.dp_replicate=1 x parallel.dp_shard=2 x parallel.cp=2 != world size 8"),
    (4, dict(tp=0), r"parallel.tp=0 must be at least 1"),
    (4, dict(ep=2, tp=2), r"parallel.ep=2 with parallel.tp=2"),
    (4, dict(ep=8), r"parallel.ep=8 must be >= 1 and divide the data-parallel size 4"),
    (4, dict(pp=3), r"parallel.pp=3 x parallel.dp_replicate=1 x parallel.dp_shard=1 != world size 4"),
    (4, dict(ep=2, pp=2), r"parallel.ep=2 with parallel.pp=2"),
])
def test_sizes_that_do_not_divide_out_are_refused(world, sizes, message):
    with pytest.raises(ValueError, match=message):
        dims(world, **sizes)


@pytest.mark.parametrize("preset,overrides,sizes,message", [
    ("llama3_tiny", {"mixers.full.attention.num_kv_heads": 1}, dict(tp=2),
     r"model.mixers.full.attention.num_kv_heads=1 is not divisible by parallel.tp=2"),
    ("llama3_tiny", {}, dict(tp=8), r"num_heads=4 is not divisible by parallel.tp=8"),
    ("llama3_tiny", {"vocab_size": 8191}, dict(tp=2), r"model.vocab_size=8191 is not divisible by parallel.tp=2"),
    ("llama3_tiny", {"ffns.swiglu.hidden_dim": 175}, dict(tp=2),
     r"model.ffns.swiglu.hidden_dim=175 is not divisible by parallel.tp=2"),
    ("mamba2_tiny", {}, dict(tp=2), r"kind mamba2 is not supported with parallel.tp=2"),
    ("mamba2_tiny", {}, dict(cp=8), r"model.mixers.ssm.mamba2.num_heads=4 is not divisible by parallel.cp=8"),
    ("qwen3_next_tiny", {}, dict(cp=8),
     r"model.mixers.linear.gated_deltanet.num_value_heads=4 is not divisible by parallel.cp=8"),
    ("deepseek_v3_tiny", {}, dict(tp=8), r"model.mixers.mla.mla.num_heads=4 is not divisible by parallel.tp=8"),
    ("gpt_oss_tiny", {}, dict(tp=2), r"attention.sinks is not supported with parallel.tp=2"),
    ("qwen3_moe_tiny", {}, dict(ep=3, dp_shard=3), r"8 experts cannot be split over parallel.ep=3"),
    ("llama3_tiny", {"mtp.depth": 1}, dict(tp=2), r"model.mtp and model.residual .* parallel.tp=2, parallel.cp=1"),
    ("llama3_tiny", {"residual.arrangement": "parallel"}, dict(cp=2), r"model.mtp and model.residual .* parallel.cp=2"),
])
def test_models_that_do_not_split_are_refused(preset, overrides, sizes, message):
    model = apply_overrides(load_preset(preset), overrides)
    world = sizes.get("tp", 1) * sizes.get("cp", 1) * sizes.get("dp_shard", 1)
    with pytest.raises(ValueError, match=message):
        dims(world, **sizes).check_model(model)


def test_sequence_length_and_stage_are_checked():
    model = load_preset("llama3_tiny")
    dims(4, cp=2, tp=2).check_model(model, seq_len=64)
    with pytest.raises(ValueError, match=r"data.seq_len=60 must be a multiple of 8 for parallel.cp=2"):
        dims(4, cp=2, tp=2).check_model(model, seq_len=60)
    with pytest.raises(ValueError, match=r"stage=dpo with parallel.tp=2"):
        dims(2, tp=2).check_model(model, seq_len=64, stage="dpo")
