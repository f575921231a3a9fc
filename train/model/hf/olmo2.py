"""Hugging Face adapter for OLMo 2 (Olmo2ForCausalLM; OLMo et al. 2024, "2 OLMo 2 Furious", arXiv
2501.00656 sec. 3.3.1). Llama-like with the norms moved after the sublayers, x + norm(attn(x)) and
x + norm(mlp(x)) (no input norm), and QK-norm over the whole q and k projections, not per head."""

from train.model.hf import llama
from train.model.hf.weights import Rule

MODEL_TYPE, ARCHITECTURE, FAMILY = "olmo2", "Olmo2ForCausalLM", "olmo2"

_PRE_NORMS = ("layers.{i}.mixer_norm.weight", "layers.{i}.ffn_norm.weight")  # OLMo 2 has none
WEIGHTS = [rule for rule in llama.WEIGHTS if rule.ours[0] not in _PRE_NORMS] + [
    Rule(("layers.{i}.mixer_post_norm.weight",), "model.layers.{i}.post_attention_layernorm.weight"),
    Rule(("layers.{i}.ffn_post_norm.weight",), "model.layers.{i}.post_feedforward_layernorm.weight"),
    *[Rule((f"layers.{{i}}.mixer.{p}_norm.weight",), f"model.layers.{{i}}.self_attn.{p}_norm.weight") for p in "qk"],
]
IGNORED = llama.IGNORED


def config_from_hf(hf: dict) -> dict:
    config = llama.config_from_hf(hf, family=FAMILY, qk_norm=True)
    for mixer in config["mixers"].values():
        mixer["attention"]["qk_norm_over"] = "all"
    config["norm_placement"] = "post_sublayer"
    return config


def config_to_hf(config) -> dict:
    hf = llama.config_to_hf(config, MODEL_TYPE, ARCHITECTURE)
    del hf["mlp_bias"]  # Olmo2MLP has no bias option
    return hf
