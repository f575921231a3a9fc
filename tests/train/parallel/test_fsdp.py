"""Where FSDP2 wraps the model: on more than one rank. One process trains the plain model, its fp32 master
weights computing in parallel.param_dtype under torch.autocast, the experts' grouped matmuls included."""

import contextlib

import pytest
import torch
from torch import nn

from train.config import ParallelConfig
from train.model import build_model
from train.model.moe.experts import RoutedExperts
from train.parallel.dims import ParallelDims
from train.parallel.fsdp import forward_precision, parallelize

CPU = torch.device("cpu")


def test_fsdp_wraps_the_model_on_more_than_one_rank_only():
    assert not ParallelDims.resolve(ParallelConfig(), 1).fsdp
    for sizes in ({}, {"tp": 2}, {"pp": 2}):  # over one dp rank, tp and pp keep FSDP's mixed precision
        assert ParallelDims.resolve(ParallelConfig(**sizes), 2).fsdp
    assert ParallelDims.resolve(ParallelConfig(), 1).describe() == "1 rank(s): not sharded"
    two = ParallelDims.resolve(ParallelConfig(), 2)
    assert forward_precision(ParallelConfig(param_dtype="bf16"), two, CPU) is contextlib.nullcontext  # FSDP casts


@pytest.mark.parametrize("preset", ["llama3_tiny", "gpt_oss_tiny"])  # gpt_oss: experts with biases
def test_one_process_computes_in_bf16_on_fp32_weights(preset):
    torch.manual_seed(0)
    config, one = ParallelConfig(param_dtype="bf16"), ParallelDims.resolve(ParallelConfig(), 1)
    model = parallelize(build_model(preset), config, one)
    assert all(type(p) is nn.Parameter and p.dtype == torch.float32 for p in model.parameters())  # no DTensor
    outputs = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, RoutedExperts)):
            module.register_forward_hook(lambda m, args, out, name=name: outputs.update({name: out.dtype}))
    inputs_BT = torch.randint(0, model.config.vocab_size, (2, 16))
    with forward_precision(config, one, CPU)():
        hidden_BTD = model.hidden_states(inputs_BT)
    hidden_BTD.float().square().sum().backward()
    assert any(isinstance(m, RoutedExperts) for m in model.modules()) == (preset == "gpt_oss_tiny")
    assert outputs and set(outputs.values()) == {torch.bfloat16}, outputs
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)
    assert forward_precision(ParallelConfig(param_dtype="fp32"), one, CPU) is contextlib.nullcontext
