"""Parity with transformers (the reference) for the Llama-like families and rope scalings: Llama 3.x
with llama3 / linear / dynamic rope, Mistral, Qwen2/2.5, Mixtral. Both directions: a transformers
save_pretrained folder loaded here (fp32 logits within 1e-5), and the tiny presets exported and loaded
back by transformers' AutoModelForCausalLM. Also the real-size presets' parameter counts against the
published ones."""

import json

import pytest
import torch
import transformers
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, MixtralConfig, MixtralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

from train.model import build_model, load_model
from train.model.config import load_preset
from train.model.hf import export_hf
from train.model.summary import summarize
from tests.model_helpers import hf_roundtrip

SMALL = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=256, initializer_range=0.1, attn_implementation="eager")
T = 32  # test sequence length: past the windows (5) and the dynamic model's max_position_embeddings (16)

HF_MODELS = {
    # Llama 3.1's scaling over a short original context, so that the blended pairs matter at T
    "llama3_scaled": lambda: LlamaForCausalLM(LlamaConfig(**SMALL, tie_word_embeddings=True, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16})),
    "llama_linear": lambda: LlamaForCausalLM(LlamaConfig(**SMALL, rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0})),
    "llama_dynamic": lambda: LlamaForCausalLM(LlamaConfig(**{**SMALL, "max_position_embeddings": 16}, rope_parameters={
        "rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})),
    "mistral": lambda: MistralForCausalLM(MistralConfig(**SMALL, sliding_window=5)),
    "mistral_full": lambda: MistralForCausalLM(MistralConfig(**SMALL, sliding_window=None, head_dim=24)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**SMALL, tie_word_embeddings=True)),
    "qwen2_sliding": lambda: Qwen2ForCausalLM(Qwen2Config(**SMALL, use_sliding_window=True, sliding_window=5, max_window_layers=1)),
    "mixtral": lambda: MixtralForCausalLM(MixtralConfig(**SMALL, num_local_experts=4, num_experts_per_tok=2, sliding_window=5)),
}
WINDOWS = {"mistral": [5, 5, 5], "qwen2_sliding": [None, 5, 5], "mixtral": [5, 5, 5], "mistral_full": [None] * 3}


def reference(name):
    """A small transformers model; vectors (norms, q/k/v biases) moved off their trivial init, routers sharpened."""
    torch.manual_seed(0)
    model = HF_MODELS[name]().eval()
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if param.dim() == 1:
                param.add_(0.3 * torch.randn_like(param))
            if param_name.endswith("mlp.gate.weight"):
                param.normal_(0, 1.0)
            if "experts" in param_name:
                param.normal_(0, 0.2)
    return model


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """name -> (transformers model, our model loaded from its save_pretrained directory)."""
    return hf_roundtrip(tmp_path_factory, reference)


def ids(vocab=96, seed=1, length=T):
    return torch.randint(0, vocab, (2, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(HF_MODELS))
def test_whole_model_logits_match_transformers(name, loaded):
    ref, ours = loaded(name)
    with torch.no_grad():
        expected, actual = ref(ids()).logits, ours(ids())
    assert expected.std() > 0.1
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(WINDOWS))
def test_windows_are_imported(name, loaded):
    _, ours = loaded(name)
    assert [layer.mixer.window for layer in ours.layers] == WINDOWS[name]


@pytest.mark.parametrize("name, imported", [
    ("llama3_scaled", {"kind": "llama3", "factor": 8.0, "original_context": 16, "low_freq_factor": 1.0, "high_freq_factor": 4.0}),
    ("llama_linear", {"kind": "linear", "factor": 2.0}),
    ("llama_dynamic", {"kind": "dynamic", "factor": 2.0, "original_context": 16}),
])
def test_rope_scaling_is_imported_and_matters(name, imported, loaded):
    """The parity above means something only if the scaling changes the logits at T."""
    _, ours = loaded(name)
    scaling = ours.config.position.scaling
    assert {k: getattr(scaling, k) for k in imported} == imported
    with torch.no_grad():
        scaled = ours(ids())
        scaling.kind = "none"
        try:
            assert not torch.allclose(scaled, ours(ids()), atol=1e-3)
        finally:
            scaling.kind = imported["kind"]


def test_qwen2_without_layer_types_slides_from_max_window_layers(tmp_path):
    """Older Qwen2 config.json files have no layer_types: layers from max_window_layers on slide."""
    ref = reference("qwen2_sliding")
    ref.save_pretrained(tmp_path)
    hf = json.loads((tmp_path / "config.json").read_text())
    assert hf.pop("layer_types") == ["full_attention", "sliding_attention", "sliding_attention"]
    (tmp_path / "config.json").write_text(json.dumps(hf))
    ours = load_model(tmp_path).eval()
    assert [layer.mixer.window for layer in ours.layers] == [None, 5, 5]
    with torch.no_grad():
        torch.testing.assert_close(ours(ids()), ref(ids()).logits, atol=1e-5, rtol=1e-5)


def test_qwen2_biases_are_imported(loaded):
    _, ours = loaded("qwen2")
    attention = ours.config.layer_mixer(0).attention
    assert (attention.qkv_bias, attention.out_bias) == (True, False)
    assert ours.layers[0].mixer.q_proj.bias.abs().sum() > 0


def test_mixtral_moe_block_matches_transformers(loaded):
    ref, ours = loaded("mixtral")
    x_BTD = torch.randn(3, 20, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, actual = ref.model.layers[0].mlp(x_BTD), ours.layers[0].ffn(x_BTD)
    assert expected.std() > 0.05
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def perturbed(preset, **overrides):
    torch.manual_seed(0)
    model = build_model(preset, init_std=0.1, **overrides).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1:
                param.add_(0.1 * torch.randn_like(param))
            if name.endswith("router.gate.weight"):
                param.normal_(0, 1.0)
    return model


DYNAMIC = {"max_seq_len": 16, "position.scaling": {"kind": "dynamic", "factor": 2.0, "original_context": 16}}
EXPORTS = {  # name -> (preset, overrides)
    "llama3_2_1b_tiny": ("llama3_2_1b_tiny", {}),
    "llama3_linear": ("llama3_tiny", {"position.scaling": {"kind": "linear", "factor": 4.0}}),
    "llama3_dynamic": ("llama3_tiny", DYNAMIC),
    "qwen2_5_0_5b_tiny": ("qwen2_5_0_5b_tiny", {}),
    "qwen2_sliding": ("qwen2_5_0_5b_tiny", {"mixers.sliding": {"kind": "softmax_attention", "attention": {
        "num_heads": 4, "num_kv_heads": 2, "head_dim": 16, "qkv_bias": True, "window": 6}}, "layer_mixers": ["full", "sliding"]}),
    "mistral_7b_tiny": ("mistral_7b_tiny", {}),
    "mixtral_8x7b_tiny": ("mixtral_8x7b_tiny", {}),
}


@pytest.mark.parametrize("name", EXPORTS)
def test_export_loads_in_transformers_with_same_logits(name, tmp_path):
    preset, overrides = EXPORTS[name]
    model = perturbed(preset, **overrides)
    export_hf(model, tmp_path / "hf")
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    with torch.no_grad():
        expected = ref(ids(8192, seed=3, length=24)).logits
        assert expected.std() > 0.1
        torch.testing.assert_close(model(ids(8192, seed=3, length=24)), expected, atol=1e-5, rtol=1e-5)
    back = load_model(tmp_path / "hf").config  # and back: the same architecture
    assert back.position == model.config.position
    assert [back.layer_mixer(i) for i in range(back.num_layers)] == [model.config.layer_mixer(i) for i in range(back.num_layers)]


def test_exported_llama3_2_config_has_meta_rope_scaling(tmp_path):
    export_hf(build_model("llama3_2_1b_tiny"), tmp_path / "hf")
    hf = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf["rope_parameters"] == {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    assert hf["tie_word_embeddings"] is True


@pytest.mark.parametrize("preset, override, field", [
    ("mistral_7b_tiny", {"mixers.sliding.attention.qkv_bias": True}, "qkv_bias"),  # Mistral has no bias option
    ("qwen2_5_0_5b_tiny", {"mixers.full.attention.qkv_bias": False}, "qkv_bias"),  # Qwen2 always has q/k/v biases
    ("mistral_7b_tiny", {"mixers.full": {"kind": "softmax_attention", "attention": {"num_heads": 4, "num_kv_heads": 2, "head_dim": 16}},
                         "layer_mixers": ["sliding", "full"]}, "window"),  # one window for every layer
    ("llama3_tiny", {**DYNAMIC, "max_seq_len": 32}, "original_context"),  # dynamic scales against max_position_embeddings
])
def test_export_refuses_what_the_family_cannot_express(preset, override, field, tmp_path):
    with pytest.raises(ValueError, match=field):
        export_hf(build_model(preset, **override), tmp_path / "hf")


def test_unsupported_rope_type_lists_supported(tmp_path):
    LlamaConfig(**SMALL, rope_parameters={"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0] * 8,
                                          "long_factor": [1.0] * 8, "original_max_position_embeddings": 64}).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="rope_type='longrope'.*supported: default, yarn, linear, dynamic, llama3"):
        load_model(tmp_path)


PUBLISHED_PARAMS = {  # the model cards' counts (safetensors totals)
    "llama3_2_1b": 1_235_814_400,
    "qwen2_5_0_5b": 494_032_768,
    "mistral_7b": 7_241_732_096,
    "mixtral_8x7b": 46_702_792_704,
}


@pytest.mark.parametrize("preset", PUBLISHED_PARAMS)
def test_real_size_presets_have_the_published_parameter_counts(preset):
    assert summarize(load_preset(preset)).params_total == PUBLISHED_PARAMS[preset]
    with torch.device("meta"):
        model = build_model(preset)
        assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMS[preset]
        if not model.moe_layers():  # routing is data-dependent: no forward on meta tensors
            assert model(torch.zeros(1, 4, dtype=torch.long)).shape == (1, 4, model.config.vocab_size)


@pytest.mark.parametrize("preset", ["llama3_2_1b_tiny", "qwen2_5_0_5b_tiny", "mistral_7b_tiny", "mixtral_8x7b_tiny"])
def test_tiny_presets_build_on_meta(preset):
    with torch.device("meta"):
        assert build_model(preset).config.family == load_preset(preset.removesuffix("_tiny")).family
