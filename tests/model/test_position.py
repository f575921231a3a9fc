"""Positional embeddings against references: transformers' rope/yarn functions and rope scalings
(linear, dynamic NTK, Llama 3.1), Meta's complex number rope (interleaved), the sinusoid formula of
Vaswani et al."""

import math

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from train.model.config import PositionConfig, RopeScalingConfig, YarnConfig
from train.model.position.rope import Rotary, rope_inv_freq
from train.model.position.sinusoidal import SinusoidalPosition
from train.model.position.yarn import yarn_inv_freq

YARN_CASES = [
    dict(factor=4.0, original_context=2048),
    dict(factor=8.0, original_context=4096, beta_fast=16.0, beta_slow=2.0),
    dict(factor=32.0, original_context=4096, mscale=0.707, mscale_all_dim=0.707),  # DeepSeek-V3 style
    dict(factor=40.0, original_context=4096, mscale=1.0, mscale_all_dim=0.8),
    dict(factor=2.0, original_context=8192, attention_factor=1.3, truncate=False),
    dict(factor=1.0, original_context=1024),
]


@pytest.mark.parametrize("case", YARN_CASES)
@pytest.mark.parametrize("head_dim, theta", [(128, 500000.0), (64, 10000.0)])
def test_yarn_matches_transformers(case, head_dim, theta):
    rope = {"rope_type": "yarn", "rope_theta": theta, "factor": case["factor"],
            "original_max_position_embeddings": case["original_context"], "truncate": case.get("truncate", True)}
    rope.update({k: case[k] for k in ("beta_fast", "beta_slow", "mscale", "mscale_all_dim", "attention_factor") if k in case})
    hf_config = LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim,
                            max_position_embeddings=4 * case["original_context"], rope_parameters=rope)
    expected_inv_freq, expected_factor = ROPE_INIT_FUNCTIONS["yarn"](hf_config, "cpu")
    inv_freq, factor = yarn_inv_freq(head_dim, theta, YarnConfig(**case))
    torch.testing.assert_close(inv_freq, expected_inv_freq, rtol=1e-6, atol=0)
    assert factor == pytest.approx(expected_factor, rel=1e-12)
    if case["factor"] > 1:  # low frequencies really are interpolated
        assert inv_freq[-1] == pytest.approx(rope_inv_freq(head_dim, theta)[-1].item() / case["factor"], rel=1e-5)


def test_default_rope_matches_transformers():
    hf_config = LlamaConfig(hidden_size=256, num_attention_heads=2, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    expected, factor = LlamaRotaryEmbedding.compute_default_rope_parameters(hf_config)
    assert factor == 1.0
    torch.testing.assert_close(rope_inv_freq(128, 1e6), expected, rtol=1e-6, atol=0)


def test_half_rotated_rope_matches_hf_apply_rotary():
    torch.manual_seed(0)
    B, T, H, K = 2, 7, 3, 16
    x_BTHK, positions_BT = torch.randn(B, T, H, K), torch.randint(0, 100, (B, T))
    angles = positions_BT[..., None].float() * rope_inv_freq(K, 10000.0)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    expected, _ = apply_rotary_pos_emb(x_BTHK.transpose(1, 2), x_BTHK.transpose(1, 2), cos, sin)
    actual = Rotary(PositionConfig(kind="rope"), K)(x_BTHK, positions_BT)
    torch.testing.assert_close(actual, expected.transpose(1, 2))


def test_interleaved_partial_rope_matches_complex_reference():
    """Meta's Llama reference rotates consecutive pairs as complex numbers times e^(i*angle);
    partial rotary leaves the dims past the rotary fraction untouched."""
    torch.manual_seed(0)
    B, T, H, K, R = 2, 5, 2, 16, 8
    x_BTHK, positions_BT = torch.randn(B, T, H, K), torch.arange(T).expand(B, T) + 3
    angles_BTF = positions_BT[..., None].float() * (1.0 / 500.0 ** (torch.arange(0, R, 2).float() / R))
    x_complex = torch.view_as_complex(x_BTHK[..., :R].reshape(B, T, H, R // 2, 2))
    rotated = torch.view_as_real(x_complex * torch.polar(torch.ones_like(angles_BTF), angles_BTF)[:, :, None]).flatten(-2)
    actual = Rotary(PositionConfig(kind="rope", theta=500.0, rotary_fraction=0.5, interleaved=True), K)(x_BTHK, positions_BT)
    torch.testing.assert_close(actual[..., :R], rotated)
    torch.testing.assert_close(actual[..., R:], x_BTHK[..., R:])


def test_rotary_fraction_must_give_even_dims():
    with pytest.raises(ValueError, match="rotary_fraction"):
        Rotary(PositionConfig(rotary_fraction=0.2), 16)  # 3 dims


def test_sinusoidal_matches_paper_formula():
    D = 8
    actual = SinusoidalPosition(D)(torch.tensor([[0, 1, 17]]))[0]
    for row, pos in enumerate([0, 1, 17]):
        for i in range(D // 2):
            assert actual[row, 2 * i].item() == pytest.approx(math.sin(pos / 10000 ** (2 * i / D)), abs=1e-6)
            assert actual[row, 2 * i + 1].item() == pytest.approx(math.cos(pos / 10000 ** (2 * i / D)), abs=1e-6)


def _hf_rope(head_dim, theta, max_position=8192, **rope):
    return LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim, max_position_embeddings=max_position,
                       rope_parameters={"rope_theta": theta, **rope})


LLAMA3_CASES = [  # Llama 3.1 (factor 8), Llama 3.2 (factor 32), and a shorter original context
    dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_context=8192),
    dict(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_context=8192),
    dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_context=4096),
    dict(factor=4.0, low_freq_factor=2.0, high_freq_factor=8.0, original_context=4096),
]


@pytest.mark.parametrize("case", LLAMA3_CASES)
@pytest.mark.parametrize("head_dim, theta", [(128, 500000.0), (64, 10000.0)])
def test_llama3_scaling_matches_transformers(case, head_dim, theta):
    hf = _hf_rope(head_dim, theta, rope_type="llama3", factor=case["factor"], low_freq_factor=case["low_freq_factor"],
                  high_freq_factor=case["high_freq_factor"], original_max_position_embeddings=case["original_context"])
    expected, expected_factor = ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")
    config = PositionConfig(kind="rope", theta=theta, scaling=RopeScalingConfig(kind="llama3", **case))
    inv_freq, factor = Rotary(config, head_dim).frequencies(torch.zeros(1, 1, dtype=torch.long))
    torch.testing.assert_close(inv_freq, expected, rtol=0, atol=0)
    assert factor == expected_factor == 1.0
    plain = rope_inv_freq(head_dim, theta)
    assert inv_freq[0] == plain[0] and inv_freq[-1] == pytest.approx(plain[-1].item() / case["factor"], rel=1e-6)
    assert ((inv_freq != plain) & (inv_freq != plain / case["factor"])).any()  # some pairs are blended


@pytest.mark.parametrize("factor, head_dim, fraction", [(2.0, 64, 1.0), (4.0, 128, 0.5)])
def test_linear_scaling_matches_transformers(factor, head_dim, fraction):
    hf = _hf_rope(head_dim, 10000.0, rope_type="linear", factor=factor, partial_rotary_factor=fraction)
    expected, expected_factor = ROPE_INIT_FUNCTIONS["linear"](hf, "cpu")
    config = PositionConfig(kind="rope", rotary_fraction=fraction, scaling=RopeScalingConfig(kind="linear", factor=factor))
    inv_freq, factor_ours = Rotary(config, head_dim).frequencies(torch.zeros(1, 1, dtype=torch.long))
    torch.testing.assert_close(inv_freq, expected, rtol=0, atol=0)
    assert factor_ours == expected_factor == 1.0


@pytest.mark.parametrize("factor, longest", [(2.0, 3000), (4.0, 1500), (2.0, 1024), (2.0, 700)])
def test_dynamic_ntk_follows_transformers_rotary_embedding(factor, longest):
    """transformers' LlamaRotaryEmbedding (with its dynamic_rope_update) over positions whose largest is
    `longest - 1`: beyond max_position_embeddings=1024 the base grows, within it the frequencies are rope's."""
    hf = _hf_rope(64, 10000.0, max_position=1024, rope_type="dynamic", factor=factor)
    positions_BT = torch.stack([torch.arange(longest - 300, longest), torch.arange(300)])
    reference = LlamaRotaryEmbedding(hf)
    cos, sin = reference(torch.zeros(2, 300, 64), positions_BT)
    expected_inv_freq, _ = ROPE_INIT_FUNCTIONS["dynamic"](hf, "cpu", seq_len=torch.tensor(longest))
    config = PositionConfig(kind="rope", scaling=RopeScalingConfig(kind="dynamic", factor=factor, original_context=1024))
    rotary = Rotary(config, 64)
    inv_freq, _ = rotary.frequencies(positions_BT)
    torch.testing.assert_close(inv_freq, reference.inv_freq, rtol=0, atol=0)
    torch.testing.assert_close(inv_freq, expected_inv_freq, rtol=0, atol=0)
    assert torch.equal(inv_freq, rope_inv_freq(64, 10000.0)) == (longest <= 1024)
    x_BTHK = torch.randn(2, 300, 1, 64)  # and the rotation itself, against apply_rotary_pos_emb
    expected_x, _ = apply_rotary_pos_emb(x_BTHK.transpose(1, 2), x_BTHK.transpose(1, 2), cos, sin)
    torch.testing.assert_close(rotary(x_BTHK, positions_BT), expected_x.transpose(1, 2))


def test_dynamic_ntk_needs_no_host_sync():
    """The frequencies come from the positions tensor on its device: building them on the meta device
    (where .item() would fail) works."""
    config = PositionConfig(kind="rope", scaling=RopeScalingConfig(kind="dynamic", factor=2.0, original_context=16))
    inv_freq, _ = Rotary(config, 16).frequencies(torch.arange(40, device="meta")[None])
    assert inv_freq.device.type == "meta" and inv_freq.shape == (8,)


def test_rope_scaling_errors_name_the_key_and_the_fix():
    with pytest.raises(ValueError, match=r"position.scaling.kind='ntk'.*'none', 'dynamic', 'linear', 'llama3'"):
        Rotary(PositionConfig(scaling=RopeScalingConfig(kind="ntk")), 16)
    with pytest.raises(ValueError, match="position.kind=rope or position.scaling.kind=none"):
        Rotary(PositionConfig(kind="yarn", scaling=RopeScalingConfig(kind="linear", factor=2.0)), 16)
