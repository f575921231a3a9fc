"""The parallel block, the branch scales and value residuals against their formulas written out with the
block's own sublayers (or a hand-written attention)."""

import math

import pytest
import torch

from train.model import build_model
from train.model.config import apply_overrides, load_preset
from train.model.mixer.softmax_attention import SoftmaxAttention
from train.model.residual.parallel_block import ParallelBlock


def block_and_input(**overrides):
    torch.manual_seed(0)
    model = build_model("llama3_tiny", init_std=0.2, **overrides).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model, model.layers[0], torch.randn(2, 6, 64), torch.arange(6).expand(2, 6)


@pytest.mark.parametrize("shared, placement", [(True, "pre"), (False, "pre"), (True, "post"), (False, "sandwich")])
def test_parallel_block_adds_both_sublayers_of_the_same_input(shared, placement):
    _, block, x, pos = block_and_input(**{"residual.arrangement": "parallel", "residual.parallel_shared_norm": shared,
                                          "norm_placement": placement})
    assert isinstance(block, ParallelBlock) and (block.ffn_norm is None) == (shared or placement == "post")
    mix = lambda h: block.mixer(h, pos, None, None)  # noqa: E731
    with torch.no_grad():
        if placement == "pre":
            expected = x + mix(block.mixer_norm(x)) + block.ffn((block.mixer_norm if shared else block.ffn_norm)(x))
        elif placement == "post":  # one norm after the sum
            expected = block.mixer_post_norm(x + mix(x) + block.ffn(x))
        else:
            expected = x + block.mixer_post_norm(mix(block.mixer_norm(x))) + block.ffn_post_norm(block.ffn(block.ffn_norm(x)))
        torch.testing.assert_close(block(x, pos), expected)


@pytest.mark.parametrize("scale", ["layerscale", "depth"])
def test_branch_scales_multiply_each_sublayer(scale):
    model, block, x, pos = block_and_input(**{"residual.branch_scale": scale, "residual.layerscale_init": 0.05})
    if scale == "layerscale":
        assert block.mixer_scale.gamma.tolist() == pytest.approx([0.05] * 64)
        with torch.no_grad():
            block.mixer_scale.gamma.normal_(), block.ffn_scale.gamma.normal_()
        a, b = block.mixer_scale.gamma, block.ffn_scale.gamma
    else:
        a = b = 1 / math.sqrt(2 * model.config.num_layers)
    with torch.no_grad():
        h = x + a * block.mixer(block.mixer_norm(x), pos, None, None)
        torch.testing.assert_close(block(x, pos), h + b * block.ffn(block.ffn_norm(h)))


def naive_attention(attn, x, v_first, lambdas):
    """Causal softmax attention without positions, values lambda_1 v + lambda_2 v_first, GQA by repetition."""
    B, T, _ = x.shape
    H, G, K = attn.num_heads, attn.num_kv_heads, attn.head_dim
    q = (x @ attn.q_proj.weight.T).view(B, T, H, K).transpose(1, 2)
    k = (x @ attn.k_proj.weight.T).view(B, T, G, K).transpose(1, 2).repeat_interleave(H // G, dim=1)
    v = lambdas[0] * (x @ attn.v_proj.weight.T).view(B, T, G, K) + lambdas[1] * v_first
    v = v.transpose(1, 2).repeat_interleave(H // G, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(K)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H * K)
    return y @ attn.o_proj.weight.T


def test_value_residual_mixes_the_first_layers_values():
    config = apply_overrides(load_preset("llama3_tiny"), {"residual.value_residual": True, "position.kind": "none"})
    torch.manual_seed(0)
    first, later = SoftmaxAttention(config.layer_mixer(0), config, 0), SoftmaxAttention(config.layer_mixer(1), config, 1)
    assert first.value_residual is None and later.value_residual.lambdas.tolist() == [0.5, 0.5]
    x, x_first, pos = torch.randn(2, 7, 64), torch.randn(2, 7, 64), torch.arange(7).expand(2, 7)
    out_first, v_first = first(x_first, pos)
    torch.testing.assert_close(v_first, first.v_proj(x_first).view(2, 7, 2, 16))  # the first layer passes its own on
    with torch.no_grad():
        later.value_residual.lambdas.copy_(torch.tensor([0.3, 1.4]))
    out, passed = later(x, pos, None, None, v_first)
    assert passed is v_first
    torch.testing.assert_close(out, naive_attention(later, x, v_first, (0.3, 1.4)))


def test_value_residual_model_reduces_to_the_plain_one_with_lambdas_1_0():
    plain = build_model("llama3_tiny", num_layers=3).eval()
    resformer = build_model("llama3_tiny", num_layers=3, **{"residual.value_residual": True}).eval()
    missing, unexpected = resformer.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and sorted(missing) == [f"layers.{i}.mixer.value_residual.lambdas" for i in (1, 2)]
    ids = torch.randint(0, 8192, (2, 9))
    with torch.no_grad():
        assert not torch.allclose(resformer(ids), plain(ids), atol=1e-4)
        for i in (1, 2):
            resformer.layers[i].mixer.value_residual.lambdas.copy_(torch.tensor([1.0, 0.0]))
        torch.testing.assert_close(resformer(ids), plain(ids))


def test_value_residual_model_decodes_with_its_cache():
    from tests.model_helpers import assert_cached_decoding_equals_full

    torch.manual_seed(0)
    model = build_model("llama3_tiny", init_std=0.2, num_layers=3, **{"residual.value_residual": True}).eval()
    assert_cached_decoding_equals_full(model, torch.randint(0, 8192, (2, 10)), prompt=5, tolerance=1e-4)


def test_residual_options_that_do_not_combine_are_refused():
    with pytest.raises(ValueError, match="needs at least one"):
        build_model("mamba2_tiny", **{"residual.value_residual": True})
    with pytest.raises(ValueError, match="norm placement other than post"):
        build_model("llama3_tiny", norm_placement="post", **{"residual.hyper_connections.kind": "static"})
    with pytest.raises(ValueError, match="residual.arrangement='side'"):
        build_model("llama3_tiny", **{"residual.arrangement": "side"})
    with pytest.raises(ValueError, match="mtp runs plain blocks"):
        build_model("llama3_tiny", **{"mtp.depth": 1, "residual.value_residual": True})
