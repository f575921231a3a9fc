"""Hugging Face adapter for Qwen3 (Qwen3ForCausalLM): Llama plus per-head QK-norm, and optional
sliding-window layers given by config.json `layer_types` + `sliding_window`."""

from train.model.hf import llama
from train.model.hf.weights import Rule

MODEL_TYPE, ARCHITECTURE, FAMILY = "qwen3", "Qwen3ForCausalLM", "qwen3"

WEIGHTS = llama.WEIGHTS + [
    Rule((f"layers.{{i}}.mixer.{p}_norm.weight",), f"model.layers.{{i}}.self_attn.{p}_norm.weight") for p in "qk"
]
IGNORED = llama.IGNORED


def config_from_hf(hf: dict) -> dict:
    layer_types = hf.get("layer_types") or ["full_attention"] * hf["num_hidden_layers"]
    # transformers sets sliding_window to None unless use_sliding_window, which disables the window
    window = hf.get("sliding_window") if hf.get("use_sliding_window", False) else None
    windows = [window if t == "sliding_attention" else None for t in layer_types]
    return llama.config_from_hf(hf, family=FAMILY, qk_norm=True, windows=windows)


def config_to_hf(config) -> dict:
    hf = llama.config_to_hf(config, MODEL_TYPE, ARCHITECTURE)
    del hf["mlp_bias"]  # Qwen3's MLP has no bias option
    windows = [config.layer_mixer(i).attention.window for i in range(config.num_layers)]
    sliding = [w for w in windows if w is not None]
    hf.update(
        use_sliding_window=bool(sliding),
        sliding_window=sliding[0] if sliding else None,  # one window for all sliding layers
        max_window_layers=config.num_layers,
        layer_types=["full_attention" if w is None else "sliding_attention" for w in windows],
    )
    return hf
