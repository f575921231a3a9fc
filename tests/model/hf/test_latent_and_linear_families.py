"""Parity with transformers (the reference) for MLA (DeepSeek-V3), Gated DeltaNet and gated
attention (Qwen3-Next) and Mamba2: single layers with copied weights, whole models through
load_model of a save_pretrained directory, and exports loaded back by transformers."""

import subprocess
import sys

import pytest
import torch
import transformers
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM, Mamba2Config, Mamba2ForCausalLM, Qwen3NextConfig, Qwen3NextForCausalLM

from train.model import build_model, load_model, load_preset, save_model
from train.model.hf import _architecture, export_hf, hf_config
from tests.model_helpers import hf_roundtrip
from common.paths import REPO


SMALL = dict(vocab_size=96, hidden_size=64, intermediate_size=96, max_position_embeddings=256, initializer_range=0.1)
YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64, "mscale": 1.0, "mscale_all_dim": 0.8}
MLA = dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=32, qk_nope_head_dim=16,
           qk_rope_head_dim=8, v_head_dim=12, first_k_dense_replace=2, attn_implementation="eager")

HF_MODELS = {
    "deepseek_v3_q_lora_yarn": lambda: DeepseekV3ForCausalLM(DeepseekV3Config(**SMALL, **MLA, q_lora_rank=24, rope_parameters=YARN)),
    "deepseek_v3_no_q_lora": lambda: DeepseekV3ForCausalLM(DeepseekV3Config(**SMALL, **MLA, q_lora_rank=None)),
    "deepseek_v3_half_rope": lambda: DeepseekV3ForCausalLM(DeepseekV3Config(**SMALL, **MLA, q_lora_rank=24, rope_interleave=False)),
    "qwen3_next": lambda: Qwen3NextForCausalLM(Qwen3NextConfig(
        **SMALL, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16, linear_num_key_heads=2,
        linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=8, mlp_only_layers=[0, 1, 2, 3], attn_implementation="eager")),
    "mamba2": lambda: Mamba2ForCausalLM(Mamba2Config(vocab_size=96, hidden_size=64, num_hidden_layers=2, num_heads=4, head_dim=32,
                                                     state_size=16, n_groups=2, expand=2, chunk_size=16, initializer_range=0.1)),
}


def reference(name):
    """A small transformers model with weights randomised where its init is trivial (zero-centred
    norms, A_log, dt_bias, D), so that parity tests every parameter."""
    torch.manual_seed(0)
    model = HF_MODELS[name]().eval()
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if param.dim() == 1 and ("norm" in param_name or param_name.endswith(("A_log", "dt_bias", ".D"))):
                param.add_(0.3 * torch.randn_like(param))
    return model


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """name -> (transformers model, our model loaded from its save_pretrained directory)."""
    return hf_roundtrip(tmp_path_factory, reference)


def causal_additive_mask(T):
    return torch.full((T, T), float("-inf")).triu(1)[None, None]


@pytest.mark.parametrize("name", ["deepseek_v3_q_lora_yarn", "deepseek_v3_no_q_lora", "deepseek_v3_half_rope"])
def test_mla_layer_matches_deepseek_v3_attention(name, loaded):
    ref, ours = loaded(name)
    torch.manual_seed(1)
    x_BTD, positions_BT = torch.randn(2, 80, 64), torch.arange(80).expand(2, 80)  # past the yarn original context
    hf_attention = ref.model.layers[0].self_attn
    assert (hf_attention.q_proj is None) == (ours.layers[0].mixer.q_lora_rank is not None)
    with torch.no_grad():
        expected, _ = hf_attention(x_BTD, ref.model.rotary_emb(x_BTD, positions_BT), causal_additive_mask(80))
        actual = ours.layers[0].mixer(x_BTD, positions_BT)
    assert expected.std() > 0.05
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


def test_gated_deltanet_layer_matches_qwen3_next(loaded):
    ref, ours = loaded("qwen3_next")
    torch.manual_seed(1)
    x_BTD = torch.randn(2, 70, 64)  # several chunks of 64 in transformers, of 16 in ours
    with torch.no_grad():
        expected = ref.model.layers[0].linear_attn(x_BTD)
        actual = ours.layers[0].mixer(x_BTD, torch.arange(70).expand(2, 70))
        recurrent = ours.layers[0].mixer(x_BTD, torch.arange(70).expand(2, 70), recurrent=True)
    assert expected.std() > 0.01
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(recurrent, expected, atol=1e-4, rtol=1e-4)


def test_gated_attention_layer_matches_qwen3_next(loaded):
    ref, ours = loaded("qwen3_next")
    torch.manual_seed(1)
    x_BTD, positions_BT = torch.randn(2, 20, 64), torch.arange(20).expand(2, 20)
    with torch.no_grad():
        expected, _ = ref.model.layers[3].self_attn(x_BTD, ref.model.rotary_emb(x_BTD, positions_BT), causal_additive_mask(20))
        actual = ours.layers[3].mixer(x_BTD, positions_BT)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


def test_mamba2_mixer_matches_transformers(loaded):
    ref, ours = loaded("mamba2")
    torch.manual_seed(1)
    x_BTD = torch.randn(2, 50, 64)
    with torch.no_grad():
        expected = ref.backbone.layers[0].mixer(x_BTD)
        actual = ours.layers[0].mixer(x_BTD, None)
    assert expected.std() > 0.01
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", list(HF_MODELS))
def test_whole_model_logits_match_transformers(name, loaded):
    ref, ours = loaded(name)
    ids = torch.randint(0, 96, (2, 40))
    with torch.no_grad():
        expected = ref(ids).logits
        actual = ours(ids)
    assert expected.std() > 0.1
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("preset", ["deepseek_v3_tiny", "qwen3_next_tiny", "mamba2_tiny"])
def test_tiny_preset_export_loads_in_transformers_with_same_logits(preset, tmp_path):
    torch.manual_seed(0)
    model = build_model(preset, init_std=0.1).eval()
    with torch.no_grad():  # move the zero/one-initialised vectors off their defaults
        for name, param in model.named_parameters():
            if param.dim() == 1:
                param.add_(0.1 * torch.randn_like(param))
    export_hf(model, tmp_path / "hf")
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    ids = torch.randint(0, 8192, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(ref(ids).logits, model(ids), atol=1e-4, rtol=1e-4)
    back = load_model(tmp_path / "hf").config  # and back: the same architecture (training settings are not exported)
    assert _architecture(back) == _architecture(model.config)


@pytest.mark.parametrize("preset", ["deepseek_v3_tiny", "qwen3_next_tiny", "mamba2_tiny"])
def test_tiny_preset_built_in_transformers_loads_with_same_logits(preset, tmp_path):
    """The tiny preset's architecture built by transformers (random HF init, vectors perturbed),
    saved with save_pretrained, read back by load_model."""
    hf = hf_config(load_preset(preset))
    torch.manual_seed(0)
    ref = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.for_model(**{**hf, "initializer_range": 0.1}), attn_implementation="eager").eval()
    with torch.no_grad():
        for param in ref.parameters():
            if param.dim() == 1:
                param.add_(0.1 * torch.randn_like(param))
    ref.save_pretrained(tmp_path)
    model = load_model(tmp_path).eval()
    ids = torch.randint(0, 8192, (2, 40))
    with torch.no_grad():
        expected = ref(ids).logits
        assert expected.std() > 0.1
        torch.testing.assert_close(model(ids), expected, atol=1e-4, rtol=1e-4)


def test_export_cli_for_a_linear_family(tmp_path):
    torch.manual_seed(0)
    model = build_model("mamba2_tiny", init_std=0.1).eval()
    save_model(model, tmp_path / "ckpt")
    subprocess.run([sys.executable, "-m", "train.export", f"model_dir={tmp_path / 'ckpt'}", f"out={tmp_path / 'hf'}"],
                   cwd=REPO, check=True, capture_output=True)
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, 8192, (1, 24))
    with torch.no_grad():
        torch.testing.assert_close(ref(ids).logits, model(ids), atol=1e-4, rtol=1e-4)


def test_inexpressible_mixers_are_refused(tmp_path):
    with pytest.raises(ValueError, match="parallel_hybrid"):
        export_hf(build_model("qwen3_next_tiny", **{"mixers.full": {"kind": "parallel_hybrid", "parallel_hybrid": {}}}), tmp_path / "x")


@pytest.mark.parametrize("preset", ["qwen3_next_tiny", "mamba2_tiny"])
def test_linear_kernels_is_not_architecture(preset):
    """model.linear_kernels changes how the scans compute, not what: export ignores it."""
    config = load_preset(preset)
    config.linear_kernels = "torch"
    assert "linear_kernels" not in _architecture(config)
    assert hf_config(config) == hf_config(load_preset(preset))
