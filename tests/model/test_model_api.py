"""build_model / save_model / load_model, config errors, the trainer-facing hooks."""

import pytest
import torch

from train.model import build_model, load_model, save_model
from train.model.config import ModelConfig


@pytest.mark.parametrize("preset", ["gpt2", "llama3", "qwen3", "deepseek_v3", "qwen3_next", "mamba2", "falcon_h1",
                                    "qwen3_moe", "kimi_k2", "gpt_oss", "longcat_flash", "gemma3_1b", "olmo2_1b"])
def test_full_size_presets_build_on_meta(preset):
    with torch.device("meta"):
        model = build_model(preset)
    if model.moe_layers():  # routing is data-dependent (token counts per expert): no forward on meta tensors
        return
    assert model(torch.zeros(1, 4, dtype=torch.long, device="meta")).shape == (1, 4, model.config.vocab_size)


def test_tiny_presets_inherit_family_and_shrink():
    model = build_model("qwen3_tiny")
    assert model.config.family == "qwen3" and model.config.vocab_size == 8192 and model.config.dim == 64
    assert model.layers[0].mixer.q_norm is not None  # inherited from configs/model/qwen3.yaml


def test_forward_is_hidden_states_times_output_weight():
    model = build_model("llama3_tiny").eval()
    ids = torch.randint(0, 8192, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), model.hidden_states(ids) @ model.output_weight().T)
    tied = build_model("gpt2_tiny")
    assert tied.output_weight() is tied.embed.weight


def test_save_and_load_roundtrip(tmp_path):
    model = build_model("llama3_tiny", num_layers=3, **{"mixers.full.attention.window": 7}).eval()
    save_model(model, tmp_path / "ckpt")
    save_model(model, tmp_path / "ckpt")  # overwriting is fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary directory left
    loaded = load_model(tmp_path / "ckpt").eval()
    assert loaded.config == model.config
    ids = torch.randint(0, 8192, (1, 12))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


def test_build_from_config_object_and_errors(tmp_path):
    config = build_model("llama3_tiny").config
    assert isinstance(config, ModelConfig) and build_model(config, dim=32, **{"mixers.full.attention.head_dim": 8}).config.dim == 32
    with pytest.raises(Exception, match="num_kv_head"):
        build_model("llama3_tiny", **{"mixers.full.attention.num_kv_head": 1})
    with pytest.raises(ValueError, match="available: .*llama3_tiny"):
        build_model("llama4")
    with pytest.raises(ValueError, match="model.layer_mixers names \\['nope'\\]"):
        build_model("llama3_tiny", layer_mixers=["nope"])
    with pytest.raises(ValueError, match="unknown mixer kind 'mamba'; registered: \\[.*'mamba2'.*'softmax_attention'\\]"):
        build_model("llama3_tiny", **{"mixers.full.kind": "mamba"})
    with pytest.raises(FileNotFoundError, match="model.yaml"):
        load_model(tmp_path)


def test_every_parameter_is_initialised_after_meta_materialisation():
    with torch.device("meta"):
        model = build_model("gpt2_tiny", **{"mixers.full.attention.sinks": True})
    model.to_empty(device="cpu")
    model.init_weights()
    for name, param in model.named_parameters():
        assert torch.isfinite(param).all(), name
    assert (model.layers[0].mixer_norm.weight == 1).all() and (model.layers[0].mixer.sinks == 0).all()
