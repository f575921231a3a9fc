"""Per-block torch.compile with fullgraph=True: dense and MoE blocks (with zero-computation experts, the
router's bias, GPT-OSS's sinks and clamped experts) compile into one graph each, forward and backward,
and give the eager result. `aot_eager` traces exactly what inductor would compile, without building kernels."""

import pytest
import torch
from torch._dynamo.utils import counters

from train.config import ParallelConfig
from train.model import build_model
from train.model.documents import Documents
from train.parallel.dims import ParallelDims
from train.parallel.fsdp import compiles_whole

PRESETS = ["llama3_tiny", "qwen3_moe_tiny", "deepseek_v3_tiny", "gpt_oss_tiny", "longcat_flash_tiny"]


@pytest.mark.parametrize("preset, packed", [(p, False) for p in PRESETS] + [("llama3_tiny", True), ("qwen3_next_tiny", True)])
def test_blocks_compile_whole_and_match_eager(preset, packed):
    """packed: documents packed into each row (doc_ids: the pre-training default), whose masks and
    positions the block reads from a Documents (Python 3.11's functools.cached_property broke the trace)."""
    torch.manual_seed(0)
    model = build_model(preset, init_std=0.1).to(torch.bfloat16)
    block = model.layers[-1]
    x_BTD = torch.randn(2, 16, model.config.dim, dtype=torch.bfloat16)
    positions_BT = torch.arange(16).expand(2, 16)
    doc_ids_BT = torch.tensor([[0] * 5 + [1] * 11, [0] * 9 + [1] * 4 + [2] * 3])
    torch._dynamo.reset()  # an earlier compile of the same code would hide graph breaks
    counters.clear()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    outputs = []
    for run in (block, compiled):
        x = x_BTD.clone().requires_grad_()
        y = run(x, positions_BT, Documents(doc_ids_BT) if packed else None)
        y.float().square().sum().backward()
        outputs.append((y.detach(), x.grad))
    assert sum(counters["graph_break"].values()) == 0
    for eager, traced in zip(*outputs):
        torch.testing.assert_close(traced, eager, atol=2e-2, rtol=2e-2)


def test_which_blocks_compile_whole():
    with torch.device("meta"):
        dense, moe = build_model("llama3_tiny").layers[0], build_model("qwen3_moe_tiny").layers[0]
    one_rank = ParallelDims(1, 2, 1, 2, "cpu")
    assert compiles_whole(dense, ParallelConfig(param_dtype="fp32"), one_rank)
    assert compiles_whole(moe, ParallelConfig(param_dtype="bf16"), one_rank)
    assert not compiles_whole(moe, ParallelConfig(param_dtype="fp32"), one_rank)  # fp32 grouped matmuls: eager only
    assert not compiles_whole(moe, ParallelConfig(param_dtype="bf16", ep=2), ParallelDims(1, 2, 2, 2, "cpu"))
