"""Logit parity with Hugging Face transformers (the reference), both directions."""

import subprocess
import sys

import pytest
import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from train.model import build_model, load_model, save_model
from train.model.hf import export_hf
from common.paths import REPO
from tests.model_helpers import hf_logits

SMALL = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
             max_position_embeddings=256, initializer_range=0.1, attn_implementation="eager")

HF_MODELS = {
    "llama_mha": lambda: LlamaForCausalLM(LlamaConfig(**SMALL, num_key_value_heads=4)),
    "llama_gqa": lambda: LlamaForCausalLM(LlamaConfig(**SMALL, num_key_value_heads=2)),
    "llama_mqa": lambda: LlamaForCausalLM(LlamaConfig(**SMALL, num_key_value_heads=1, rope_parameters={"rope_type": "default", "rope_theta": 500000.0})),
    "llama_yarn": lambda: LlamaForCausalLM(LlamaConfig(**SMALL, num_key_value_heads=2, rope_parameters={
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16})),
    "llama_tied_bias": lambda: LlamaForCausalLM(LlamaConfig(**SMALL, num_key_value_heads=2, attention_bias=True, mlp_bias=True, tie_word_embeddings=True)),
    "qwen3_qknorm": lambda: Qwen3ForCausalLM(Qwen3Config(**SMALL, num_key_value_heads=2, head_dim=24)),
    "qwen3_sliding": lambda: Qwen3ForCausalLM(Qwen3Config(**SMALL, num_key_value_heads=2, head_dim=16, use_sliding_window=True, sliding_window=5,
                                                          layer_types=["sliding_attention", "full_attention", "sliding_attention"])),
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=96, n_embd=64, n_layer=2, n_head=4, n_positions=64, initializer_range=0.1,
                                               bos_token_id=0, eos_token_id=0, attn_implementation="eager")),
}


@pytest.mark.parametrize("name", HF_MODELS)
def test_load_hf_directory_matches_transformers(name, tmp_path):
    torch.manual_seed(0)
    reference = HF_MODELS[name]().eval()
    reference.save_pretrained(tmp_path)
    model = load_model(tmp_path).eval()
    ids = torch.randint(0, 96, (2, 24))
    expected = hf_logits(reference, ids)
    assert expected.std() > 0.1  # a comparison of near-zero logits would prove nothing
    with torch.no_grad():
        torch.testing.assert_close(model(ids), expected, atol=1e-5, rtol=1e-5)


def test_sliding_window_is_applied(tmp_path):
    """The qwen3 parity above only means something if HF and we both apply the window."""
    torch.manual_seed(0)
    HF_MODELS["qwen3_sliding"]().save_pretrained(tmp_path)
    model = load_model(tmp_path).eval()
    assert [layer.mixer.window for layer in model.layers] == [5, None, 5]
    ids = torch.randint(0, 96, (1, 24))
    with torch.no_grad():
        windowed = model(ids)
        model.layers[0].mixer.window = model.layers[2].mixer.window = None
        assert not torch.allclose(windowed[:, 5:], model(ids)[:, 5:], atol=1e-3)
        torch.testing.assert_close(windowed[:, :5], model(ids)[:, :5])  # first window: no difference


EXPORTS = {
    "llama3_tiny": {"mixers.full.attention.num_kv_heads": 1},
    "qwen3_tiny": {"mixers.sliding": {"kind": "softmax_attention", "attention": {"num_heads": 4, "num_kv_heads": 2, "head_dim": 16, "qk_norm": True, "window": 6}},
                   "layer_mixers": ["sliding", "full"], "num_layers": 4},
    "gpt2_tiny": {},
}


@pytest.mark.parametrize("preset", EXPORTS)
def test_export_loads_in_transformers_with_same_logits(preset, tmp_path):
    torch.manual_seed(0)
    model = build_model(preset, init_std=0.1, **EXPORTS[preset]).eval()
    export_hf(model, tmp_path / "hf")
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    ids = torch.randint(0, 8192, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(hf_logits(reference, ids), model(ids), atol=1e-5, rtol=1e-5)


def test_export_cli_copies_tokenizer_and_matches(tmp_path):
    torch.manual_seed(0)
    model = build_model("llama3_tiny", init_std=0.1).eval()
    save_model(model, tmp_path / "run" / "step_10")
    (tmp_path / "run" / "tokenizer_config.json").write_text("{}")
    out = tmp_path / "hf"
    subprocess.run([sys.executable, "-m", "train.export", f"model_dir={tmp_path / 'run' / 'step_10'}", f"out={out}"],
                   cwd=REPO, check=True, capture_output=True)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer_config.json"]
    reference = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    ids = torch.randint(0, 8192, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf_logits(reference, ids), model(ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("override, field", [
    ({"mixers.full.attention.sinks": True}, "sinks"),
    ({"position.interleaved": True}, "interleaved"),
    ({"position.kind": "sinusoidal"}, "position.kind"),
])
def test_export_refuses_what_hf_cannot_express(override, field, tmp_path):
    model = build_model("llama3_tiny", **override)
    with pytest.raises(ValueError, match=field):
        export_hf(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_unsupported_hf_model_type_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert", "architectures": ["BertModel"]}')
    with pytest.raises(ValueError, match="supported model_type: .*llama"):
        load_model(tmp_path)
