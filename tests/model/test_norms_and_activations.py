"""Dynamic Tanh, the norm placements (post-norm included, per layer) and the activations against written-out
formulas and transformers' activation functions."""

import pytest
import torch
import torch.nn.functional as F
from transformers.activations import ACT2FN
from transformers.models.llama.modeling_llama import LlamaMLP

from train.model import build_model
from train.model.config import FFNConfig, NormConfig, load_preset
from train.model.ffn.glu import GLU
from train.model.ffn.mlp import MLP
from train.model.moe.experts import RoutedExperts
from train.model.norm import DynamicTanh, build_norm


def test_dynamic_tanh_is_weight_tanh_alpha_x_plus_bias():
    torch.manual_seed(0)
    norm = build_norm(NormConfig(kind="dyt", dyt_alpha=0.8), 16)
    assert isinstance(norm, DynamicTanh) and norm.alpha.item() == pytest.approx(0.8)
    with torch.no_grad():
        norm.alpha.fill_(1.7), norm.weight.normal_(), norm.bias.normal_()
    x = 3 * torch.randn(2, 5, 16, dtype=torch.float64)
    alpha, w, b = 1.7, norm.weight.double(), norm.bias.double()
    expected = w * ((torch.exp(2 * alpha * x) - 1) / (torch.exp(2 * alpha * x) + 1)) + b  # tanh written out
    torch.testing.assert_close(norm.double()(x), expected)
    bf16 = norm.float()(x.float().bfloat16())
    assert bf16.dtype == torch.bfloat16  # computed in fp32, returned in the input's dtype


def test_dyt_model_initialises_alpha_and_trains_it():
    model = build_model("llama3_tiny", **{"norm.kind": "dyt", "norm.dyt_alpha": 0.3})
    norms = [m for m in model.modules() if isinstance(m, DynamicTanh)]
    assert len(norms) == 2 * 2 + 1 and all(n.alpha.item() == pytest.approx(0.3) for n in norms)
    model(torch.randint(0, 8192, (2, 8))).logsumexp(-1).mean().backward()
    assert all(n.alpha.grad is not None and n.alpha.grad.abs() > 0 for n in norms)


def naive_block(block, x, positions):
    """The block's own sublayers composed by each placement's formula, written out."""
    mix = lambda h: block.mixer(h, positions, None, None)  # noqa: E731
    f = [(mix, block.mixer_norm, block.mixer_post_norm), (block.ffn, block.ffn_norm, block.ffn_post_norm)]
    for fn, pre, post in f:
        if block.placement == "pre":
            x = x + fn(pre(x))
        elif block.placement == "sandwich":
            x = x + post(fn(pre(x)))
        elif block.placement == "post_sublayer":
            x = x + post(fn(x))
        else:  # post: the original Transformer
            x = post(x + fn(x))
    return x


@pytest.mark.parametrize("placement", ["pre", "sandwich", "post_sublayer", "post"])
def test_each_norm_placement_is_its_formula(placement):
    torch.manual_seed(0)
    model = build_model("llama3_tiny", init_std=0.2, norm_placement=placement).eval()
    x = torch.randn(2, 6, 64)
    positions = torch.arange(6).expand(2, 6)
    block = model.layers[0]
    assert (block.mixer_norm is None) == (placement in ("post_sublayer", "post"))
    assert (block.mixer_post_norm is None) == (placement == "pre")
    with torch.no_grad():
        torch.testing.assert_close(block(x, positions), naive_block(block, x, positions))


def test_layer_norm_placements_cycle_over_the_layers():
    model = build_model("llama3_tiny", num_layers=4, layer_norm_placements=["post", "pre"])
    assert [layer.placement for layer in model.layers] == ["post", "pre", "post", "pre"]
    with pytest.raises(ValueError, match="layer_norm_placements.*'postnorm'"):
        build_model("llama3_tiny", layer_norm_placements=["postnorm"])


def test_squared_relu_and_the_activations_match_transformers():
    x = torch.randn(4, 32, dtype=torch.float64)
    ffn = FFNConfig(kind="glu", hidden_dim=24, activation="relu2")
    torch.testing.assert_close(GLU(ffn, load_preset("llama3_tiny"), 0).activation(x), torch.where(x > 0, x * x, 0 * x))
    for ours, theirs in (("relu2", "relu2"), ("gelu", "gelu"), ("gelu_tanh", "gelu_pytorch_tanh"), ("silu", "silu"),
                         ("relu", "relu"), ("sigmoid", "sigmoid")):
        mlp = MLP(FFNConfig(kind="mlp", hidden_dim=24, activation=ours), load_preset("llama3_tiny"), 0).double()
        torch.testing.assert_close(mlp.activation(x), ACT2FN[theirs](x))


@pytest.mark.parametrize("activation, hf_act", [("relu2", "relu2"), ("gelu", "gelu"), ("relu", "relu")])
def test_glu_variants_match_transformers_llama_mlp(activation, hf_act):
    from transformers import LlamaConfig

    torch.manual_seed(0)
    ours = GLU(FFNConfig(kind="glu", hidden_dim=48, activation=activation), load_preset("llama3_tiny"), 0)
    theirs = LlamaMLP(LlamaConfig(hidden_size=64, intermediate_size=48, hidden_act=hf_act))
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 5, 64)
    torch.testing.assert_close(ours(x), theirs(x))


def test_experts_take_the_activation():
    torch.manual_seed(0)
    experts = RoutedExperts(3, 16, 8, "relu2", False, None, 1.702, True, 0.5, 0.5)
    experts.reset_extra_parameters()
    x, counts = torch.randn(7, 16), torch.tensor([3, 0, 4])
    expected = torch.cat([F.linear(torch.square(F.relu(F.linear(r, experts.w1_EFD[e]))) * F.linear(r, experts.w3_EFD[e]),
                                   experts.w2_EDF[e]) for r, e in zip((x[:3], x[3:]), (0, 2))])
    torch.testing.assert_close(experts(x, counts), expected)
