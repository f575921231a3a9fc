"""Hugging Face adapter for Qwen3 (Qwen3ForCausalLM): Llama plus per-head QK-norm, and optional
sliding-window layers as in Qwen2 (qwen2.windows_from_hf: `layer_types` + `sliding_window`)."""

from train.model.hf import llama, qwen2
from train.model.hf.weights import Rule

MODEL_TYPE, ARCHITECTURE, FAMILY = "qwen3", "Qwen3ForCausalLM", "qwen3"

WEIGHTS = llama.WEIGHTS + [
    Rule((f"layers.{{i}}.mixer.{p}_norm.weight",), f"model.layers.{{i}}.self_attn.{p}_norm.weight") for p in "qk"
]
IGNORED = llama.IGNORED


def config_from_hf(hf: dict) -> dict:
    return llama.config_from_hf(hf, family=FAMILY, qk_norm=True, windows=qwen2.windows_from_hf(hf))


def config_to_hf(config) -> dict:
    hf = llama.config_to_hf(config, MODEL_TYPE, ARCHITECTURE)
    del hf["mlp_bias"]  # Qwen3's MLP has no bias option
    hf.update(qwen2.windows_to_hf(config))
    return hf
