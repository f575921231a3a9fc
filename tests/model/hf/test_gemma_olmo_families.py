"""Gemma 3 and OLMo 2: logit parity with transformers (import and export), and the blocks they brought
(norm placement, soft-capping, attention scale, per-mixer rope, whole-projection QK-norm, embedding scale)
against formulas written out here."""

import pytest
import torch
import torch.nn.functional as F
import transformers
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, Olmo2Config, Olmo2ForCausalLM

from train.dpo_loss import sequence_logps
from train.loss import IGNORE, cross_entropy_sum
from train.model import build_model, load_model
from train.model.attention import attend
from train.model.config import load_preset
from train.model.hf import _architecture, export_hf, gemma3, hf_config, olmo2
from train.model.config import to_model_config
from train.model.summary import summarize
from tests.model_helpers import hf_logits

GEMMA = dict(vocab_size=96, hidden_size=72, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=256, initializer_range=0.1,
             sliding_window=5, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
             attn_implementation="eager")
OLMO = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
            max_position_embeddings=256, initializer_range=0.1, rms_norm_eps=1e-6, attn_implementation="eager")

HF_MODELS = {
    # sqrt(72) is not a whole number: the embedding scale's rounding shows
    "gemma3": lambda: Gemma3ForCausalLM(Gemma3TextConfig(
        **GEMMA, rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000.0},
                                  "sliding_attention": {"rope_type": "default", "rope_theta": 50.0}})),
    "gemma3_scaled_capped_untied": lambda: Gemma3ForCausalLM(Gemma3TextConfig(
        **GEMMA, query_pre_attn_scalar=40, final_logit_softcapping=2.0, tie_word_embeddings=False)),
    # rope scaling applies to the global layers only
    "gemma3_yarn_global": lambda: Gemma3ForCausalLM(Gemma3TextConfig(
        **GEMMA, rope_parameters={"full_attention": {"rope_type": "yarn", "rope_theta": 1000.0, "factor": 4.0,
                                                     "original_max_position_embeddings": 64},
                                  "sliding_attention": {"rope_type": "default", "rope_theta": 50.0}})),
    "olmo2_gqa": lambda: Olmo2ForCausalLM(Olmo2Config(**OLMO, num_key_value_heads=2)),
    "olmo2_tied": lambda: Olmo2ForCausalLM(Olmo2Config(**OLMO, num_key_value_heads=4, tie_word_embeddings=True,
                                                       rope_parameters={"rope_type": "default", "rope_theta": 500000.0})),
}


@torch.no_grad()
def perturb_norms(model):
    """Norm weights start at 1 (0 for unit-offset norms); random ones make a swapped norm show."""
    for name, param in model.named_parameters():
        if "norm" in name:
            param.add_(0.3 * torch.randn_like(param))


@pytest.mark.parametrize("name", HF_MODELS)
def test_load_hf_directory_matches_transformers(name, tmp_path):
    torch.manual_seed(0)
    reference = HF_MODELS[name]().eval()
    perturb_norms(reference)
    reference.save_pretrained(tmp_path)
    model = load_model(tmp_path).eval()
    ids = torch.randint(0, 96, (2, 24))
    expected = hf_logits(reference, ids)
    assert expected.std() > 0.1
    with torch.no_grad():
        torch.testing.assert_close(model(ids), expected, atol=1e-5, rtol=1e-5)


def test_gemma3_import_reads_local_and_global_layers(tmp_path):
    torch.manual_seed(0)
    HF_MODELS["gemma3"]().save_pretrained(tmp_path)
    model = load_model(tmp_path)
    mixers = [layer.mixer for layer in model.layers]
    assert [m.window for m in mixers] == [5, None, 5]
    assert [m.rotary.config.theta for m in mixers] == [50.0, 1000.0, 50.0]
    assert model.config.norm_placement == "sandwich" and model.config.embedding_scale == 72**0.5


def test_gemma3_embedding_scale_is_rounded_to_the_hidden_dtype():
    """transformers multiplies the bf16 embeddings by bf16(sqrt(dim)), not by the fp32 scale."""
    torch.manual_seed(0)
    model = build_model("gemma3_tiny", dim=72, embedding_scale=72**0.5).to(torch.bfloat16)
    seen = {}
    model.layers[0].register_forward_pre_hook(lambda module, args: seen.update(x=args[0]))
    ids = torch.randint(0, 8192, (1, 8))
    with torch.no_grad():
        model(ids)
    expected = model.embed.weight[ids] * torch.tensor(72**0.5, dtype=torch.bfloat16)
    assert torch.equal(seen["x"], expected)
    assert not torch.equal(seen["x"], (model.embed.weight[ids].float() * 72**0.5).to(torch.bfloat16))


EXPORTS = {
    "gemma3_tiny": {"mixers.local.attention.scale_dim": 24.0, "mixers.global.attention.scale_dim": 24.0,
                    "final_softcap": 3.0, "position.theta": 2000.0},
    "olmo2_tiny": {"mixers.full.attention.num_kv_heads": 1},
}


@pytest.mark.parametrize("preset", EXPORTS)
def test_export_loads_in_transformers_with_same_logits(preset, tmp_path):
    torch.manual_seed(0)
    model = build_model(preset, init_std=0.1, **EXPORTS[preset]).eval()
    perturb_norms(model)
    export_hf(model, tmp_path / "hf")
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    assert type(reference).__name__ == {"gemma3_tiny": "Gemma3ForCausalLM", "olmo2_tiny": "Olmo2ForCausalLM"}[preset]
    ids = torch.randint(0, 8192, (2, 20))
    expected = hf_logits(reference, ids)
    assert expected.std() > 0.1
    with torch.no_grad():
        torch.testing.assert_close(model(ids), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset, override, field", [
    ("gemma3_tiny", {"mixers.global.attention.softcap": 50.0}, "softcap"),  # Gemma 3 has no attention soft-cap
    ("gemma3_tiny", {"norm_placement": "pre"}, "norm_placement"),
    ("olmo2_tiny", {"mixers.full.attention.qk_norm_over": "head"}, "qk_norm_over"),
    ("olmo2_tiny", {"final_softcap": 30.0}, "final_softcap"),
])
def test_export_refuses_what_the_family_cannot_express(preset, override, field, tmp_path):
    with pytest.raises(ValueError, match=field):
        export_hf(build_model(preset, **override), tmp_path / "hf")


# --- presets: the published sizes ---------------------------------------------------------------

GEMMA3_1B = dict(vocab_size=262144, hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,
                 num_attention_heads=4, num_key_value_heads=1, head_dim=256, max_position_embeddings=32768,
                 query_pre_attn_scalar=256, sliding_window=512, rope_theta=1_000_000.0, rope_local_base_freq=10_000.0,
                 rms_norm_eps=1e-6, tie_word_embeddings=True)
OLMO2_1B = dict(vocab_size=100352, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=16,
                num_key_value_heads=16, max_position_embeddings=4096, rope_theta=500000.0, rms_norm_eps=1e-6,
                tie_word_embeddings=False)


@pytest.mark.parametrize("preset, adapter, hf_config_class, published, params", [
    ("gemma3_1b", gemma3, Gemma3TextConfig, GEMMA3_1B, 999_885_952),  # google/gemma-3-1b-pt
    ("olmo2_1b", olmo2, Olmo2Config, OLMO2_1B, 1_484_916_736),  # allenai/OLMo-2-0425-1B
])
def test_preset_is_the_published_model(preset, adapter, hf_config_class, published, params):
    """The preset equals what the adapter reads from the published config.json, builds on the meta device,
    counts the published parameters and exports."""
    config = load_preset(preset)
    assert summarize(config).params_total == params
    published_config = to_model_config(adapter.config_from_hf(hf_config_class(**published).to_dict()))
    assert _architecture(config) == _architecture(published_config)
    assert hf_config(config)["architectures"] == [adapter.ARCHITECTURE]


def test_gemma3_preset_embedding_scale_is_sqrt_dim():
    for preset in ("gemma3_1b", "gemma3_tiny"):
        config = load_preset(preset)
        assert config.embedding_scale == config.dim**0.5


# --- the blocks against formulas written out here -----------------------------------------------


def naive_attention(q_BHTK, k_BGTK, v_BGTK, scale, cap, window=None):
    """softmax over keys l <= t (and t - l < window) of cap * tanh(scale * q.k / cap), one head at a time."""
    B, H, T, K = q_BHTK.shape
    out = torch.zeros_like(q_BHTK)
    group = H // k_BGTK.shape[1]
    for h in range(H):
        scores = scale * q_BHTK[:, h] @ k_BGTK[:, h // group].transpose(-1, -2)
        scores = cap * torch.tanh(scores / cap)
        t, l = torch.arange(T)[:, None], torch.arange(T)[None, :]
        visible = (l <= t) & ((t - l < window) if window else True)
        out[:, h] = torch.softmax(scores.masked_fill(~visible, float("-inf")), -1) @ v_BGTK[:, h // group]
    return out


@pytest.mark.parametrize("backend", ["dense", "flex"])
@pytest.mark.parametrize("window", [None, 4])
def test_softcapped_attention_matches_the_formula(backend, window):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 12, 8) * 3, torch.randn(2, 2, 12, 8) * 3, torch.randn(2, 2, 12, 8)
    expected = naive_attention(q, k, v, scale=0.2, cap=2.0, window=window)
    with torch.no_grad():
        out = attend(q, k, v, backend, window=window, scale=0.2, logit_cap=2.0)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    uncapped = attend(q, k, v, "dense", window=window, scale=0.2)
    assert not torch.allclose(out, uncapped, atol=1e-2)  # the cap is not a no-op at these scores


def test_softcapped_attention_decodes_from_a_cache():
    """The decoding path (start > 0, L != T) caps too: the last query over all keys."""
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 10, 8) * 3, torch.randn(1, 1, 10, 8) * 3, torch.randn(1, 1, 10, 8)
    expected = naive_attention(q, k, v, scale=0.3, cap=1.5)[:, :, -1:]
    torch.testing.assert_close(attend(q[:, :, -1:], k, v, "dense", start=9, scale=0.3, logit_cap=1.5), expected)


NORM_FORMULAS = {
    "pre": lambda b, x, mix: (y := x + mix(b.mixer_norm(x))) + b.ffn(b.ffn_norm(y)),
    "sandwich": lambda b, x, mix: (y := x + b.mixer_post_norm(mix(b.mixer_norm(x)))) + b.ffn_post_norm(b.ffn(b.ffn_norm(y))),
    "post_sublayer": lambda b, x, mix: (y := x + b.mixer_post_norm(mix(x))) + b.ffn_post_norm(b.ffn(y)),
}


@pytest.mark.parametrize("placement", NORM_FORMULAS)
def test_norm_placement_matches_the_hand_written_block(placement):
    torch.manual_seed(0)
    model = build_model("llama3_tiny", norm_placement=placement, init_std=0.1)
    perturb_norms(model)
    block = model.layers[0]
    x_BTD, positions_BT = torch.randn(2, 10, 64), torch.arange(10).expand(2, 10)
    expected = NORM_FORMULAS[placement](block, x_BTD, lambda h: block.mixer(h, positions_BT))
    torch.testing.assert_close(block(x_BTD, positions_BT), expected)
    norms = sorted(n.split(".")[2] for n, _ in model.named_parameters() if n.startswith("layers.0.") and "_norm" in n)
    assert norms == {"pre": ["ffn_norm", "mixer_norm"], "sandwich": ["ffn_norm", "ffn_post_norm", "mixer_norm", "mixer_post_norm"],
                     "post_sublayer": ["ffn_post_norm", "mixer_post_norm"]}[placement]


def test_whole_projection_qk_norm_matches_the_formula():
    """OLMo 2: RMSNorm of the [H*K] query projection (one statistic over all heads) before the heads split."""
    torch.manual_seed(0)
    model = build_model("olmo2_tiny", init_std=0.1)
    perturb_norms(model)
    attn = model.layers[0].mixer
    x_BTD = torch.randn(1, 6, 64)
    q = attn.q_proj(x_BTD)
    expected = q * torch.rsqrt(q.pow(2).mean(-1, keepdim=True) + 1e-6) * attn.q_norm.weight
    assert attn.q_norm.weight.shape == (4 * 16,) and attn.k_norm.weight.shape == (2 * 16,)
    torch.testing.assert_close(attn.q_norm(q), expected)


@pytest.mark.parametrize("chunk", [5, 64])
def test_softcapped_chunked_cross_entropy_matches_torch(chunk):
    torch.manual_seed(0)
    hidden = torch.randn(23, 16, requires_grad=True)
    weight = (torch.randn(40, 16) * 0.8).requires_grad_()
    targets = torch.randint(0, 40, (23,))
    targets[[2, 7]] = IGNORE
    loss = cross_entropy_sum(hidden, weight, targets, chunk, final_softcap=4.0)
    loss.backward()
    h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    logits = 4.0 * torch.tanh(h @ w.T / 4.0)
    expected = F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum")
    expected.backward()
    assert (h @ w.T).abs().max() > 8  # the cap bends the logits that matter
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(hidden.grad, h.grad)
    torch.testing.assert_close(weight.grad, w.grad)
    with torch.no_grad():
        torch.testing.assert_close(cross_entropy_sum(hidden, weight, targets, chunk, final_softcap=4.0), expected)


def test_softcapped_sequence_logps_match_torch():
    torch.manual_seed(0)
    hidden, weight = torch.randn(2, 6, 16), torch.randn(40, 16)
    targets = torch.randint(0, 40, (2, 6))
    targets[0, :2] = IGNORE
    log_probs = torch.log_softmax(3.0 * torch.tanh(hidden @ weight.T / 3.0), -1)
    picked = log_probs.gather(-1, targets.clamp(min=0)[..., None])[..., 0] * (targets != IGNORE)
    torch.testing.assert_close(sequence_logps(hidden, weight, targets, 4, final_softcap=3.0), picked.sum(1))


def test_model_forward_caps_the_logits():
    torch.manual_seed(0)
    model = build_model("olmo2_tiny", final_softcap=0.5, init_std=0.1)
    ids = torch.randint(0, 8192, (1, 8))
    with torch.no_grad():
        raw = F.linear(model.hidden_states(ids), model.output_weight())
        torch.testing.assert_close(model(ids), 0.5 * torch.tanh(raw / 0.5))
