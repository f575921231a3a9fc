import math

import pytest
import torch

from train.config import OptimConfig
from train.model import build_model
from train.optim import build_optimizer, lr_factor, parameter_groups


def test_weight_decay_only_on_matrices():
    model = build_model("gpt2_tiny")  # learned positions, layernorm with biases, tied embeddings
    decay, no_decay = parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = sorted(names[id(p)] for p in decay["params"])
    assert decayed and all(n.endswith("weight") and "norm" not in n for n in decayed)
    assert not any(n.startswith(("embed", "position")) for n in decayed)
    kept = {names[id(p)] for p in no_decay["params"]}
    assert "embed.weight" in kept and "position.weight" in kept and any(n.endswith("bias") for n in kept)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_schedules_by_hand():
    cosine = OptimConfig(warmup_steps=10, min_lr_ratio=0.1, schedule="cosine")
    assert lr_factor(0, cosine, 110) == pytest.approx(0.1)
    assert lr_factor(9, cosine, 110) == pytest.approx(1.0)
    assert lr_factor(60, cosine, 110) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(110, cosine, 110) == pytest.approx(0.1)
    wsd = OptimConfig(warmup_steps=10, min_lr_ratio=0.0, schedule="wsd", decay_fraction=0.2)
    assert [lr_factor(s, wsd, 100) for s in (50, 79)] == [1.0, 1.0]
    assert lr_factor(80, wsd, 100) == pytest.approx(1 - 1 / 20) and lr_factor(99, wsd, 100) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="optim.schedule='linear'"):
        lr_factor(50, OptimConfig(schedule="linear"), 100)


@pytest.mark.parametrize("implementation", ["fused", "foreach", "loop"])
def test_implementations_agree(implementation):
    def run(impl):
        torch.manual_seed(0)
        model = build_model("llama3_tiny", num_layers=1)
        opt = build_optimizer(model, OptimConfig(implementation=impl), torch.device("cpu"))
        for _ in range(3):
            model(torch.randint(0, 8192, (2, 16))).float().square().mean().backward()
            opt.step()
            opt.zero_grad()
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    torch.testing.assert_close(run(implementation), run("loop"), rtol=1e-5, atol=1e-6)
