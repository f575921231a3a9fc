"""The memory estimate (train/parallel/memory.py) against what PyTorch keeps: the activations backward
saves, measured on one process, and the shards a layout gives (the layouts' spawned runs check the
parameter shards of real meshes, tests/train/parallel/test_layouts.py)."""

import re
import subprocess
import sys

import torch

from common.paths import REPO
from train.config import ParallelConfig
from train.model import build_model, load_preset
from train.parallel.memory import block_activation_elements, estimate_memory


def saved_bytes(run, module) -> int:
    """Bytes of the distinct storages autograd saves for backward while `run()` executes, but `module`'s weights."""
    weights = {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return sum(storages.values())


def test_block_activations_are_what_backward_saves():
    torch.manual_seed(0)
    model = build_model("llama3_tiny")
    B, T = 2, 16  # short: the CPU's attention keeps T x T scores, which the estimate leaves out (GPU kernels)
    x_BTD = torch.randn(B, T, model.config.dim, requires_grad=True)
    positions_BT = torch.arange(T).expand(B, T)
    block = model.layers[0]
    measured = saved_bytes(lambda: block(x_BTD, positions_BT), block)
    estimated = B * T * block_activation_elements(block, tp=1) * 4
    assert 0.7 < estimated / measured < 1.3, (estimated, measured)


def test_layouts_divide_the_states_as_they_shard_them():
    model = load_preset("llama3_tiny")
    one = estimate_memory(model, ParallelConfig(param_dtype="fp32"), 1, 256, 1)
    assert one.params == sum(p.numel() for p in build_model("llama3_tiny").parameters())
    assert one.gathered_bytes == 0 and one.optimizer_bytes == 2 * one.weight_bytes == 8 * one.params
    fsdp = estimate_memory(model, ParallelConfig(param_dtype="fp32"), 4, 256, 1)
    assert fsdp.params == one.params // 4 and fsdp.gathered_bytes > 0
    tp = estimate_memory(model, ParallelConfig(param_dtype="fp32", tp=2), 2, 256, 1)
    assert one.params // 2 < tp.params < one.params // 2 + 1000  # all but the norms are split by tp
    assert tp.activation_bytes < one.activation_bytes / 1.9  # sequence parallelism splits the residual stream too
    cp = estimate_memory(model, ParallelConfig(param_dtype="fp32", cp=4), 4, 256, 1)
    assert cp.tokens == 64 and cp.params == fsdp.params
    checkpointed = estimate_memory(model, ParallelConfig(param_dtype="fp32", activation_checkpointing="full"), 1, 256, 1)
    assert checkpointed.activation_bytes < one.activation_bytes
    # pp2: rank 0 holds layer 0 and the embedding, and keeps 2 micro-batches in flight; rank 1 the rest and the head
    net = build_model("llama3_tiny")
    staged = estimate_memory(model, ParallelConfig(param_dtype="fp32", pp=2), 2, 256, 1)
    last = sum(p.numel() for name, p in net.named_parameters() if not name.startswith(("embed", "layers.0.")))
    first = one.params - last
    assert staged.params == max(first, last) and staged.gathered_bytes == 0 and "pp 2" in staged.layout


def test_inspector_prints_the_memory_of_a_layout_and_refuses_one_that_does_not_divide():
    run = [sys.executable, "-m", "train.inspect", "model=llama3", "context=131072", "devices=64"]
    out = subprocess.run(run + ["parallel.tp=8", "parallel.cp=4"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    assert "64 rank(s): dp_shard 2 x cp 4 x tp 8" in out and "32,768" in out  # tokens per device
    assert re.search(r"memory per device \(training\)\s+\d+\.\d+ GiB", out)
    bad = subprocess.run(run + ["parallel.tp=3"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode != 0 and "parallel.tp=3 != world size 64" in bad.stderr
