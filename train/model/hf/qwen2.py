"""Hugging Face adapter for Qwen2 / Qwen2.5 (Qwen2ForCausalLM): Llama with biases on q, k and v only
(fixed in transformers' Qwen2Attention; the MLP has none), and optional sliding-window layers.

Also holds the Qwen sliding-window mapping that qwen3.py shares: with `use_sliding_window` (else
transformers drops `sliding_window`), the layers that config.json `layer_types` marks
"sliding_attention" use it; files without layer_types slide from layer `max_window_layers` on.
"""

from train.model.hf import llama

MODEL_TYPE, ARCHITECTURE, FAMILY = "qwen2", "Qwen2ForCausalLM", "qwen2"

WEIGHTS = llama.WEIGHTS
IGNORED = llama.IGNORED


def windows_from_hf(hf: dict) -> list:
    """The sliding window of each layer (None = full attention), as Qwen2Config/Qwen3Config derive it."""
    num_layers = hf["num_hidden_layers"]
    window = hf.get("sliding_window") if hf.get("use_sliding_window", False) else None
    first_sliding = hf.get("max_window_layers", 28)  # the configs' default
    layer_types = hf.get("layer_types") or [
        "sliding_attention" if window is not None and i >= first_sliding else "full_attention" for i in range(num_layers)
    ]
    return [window if t == "sliding_attention" else None for t in layer_types]


def windows_to_hf(config) -> dict:
    windows = [config.layer_mixer(i).attention.window for i in range(config.num_layers)]
    sliding = [w for w in windows if w is not None]
    return {
        "use_sliding_window": bool(sliding),
        "sliding_window": sliding[0] if sliding else None,  # one window for all sliding layers
        "max_window_layers": config.num_layers,  # unused: layer_types says which layers slide
        "layer_types": ["full_attention" if w is None else "sliding_attention" for w in windows],
    }


def config_from_hf(hf: dict) -> dict:
    return llama.config_from_hf({**hf, "mlp_bias": False}, family=FAMILY, windows=windows_from_hf(hf),
                                attention_bias=(True, False))


def config_to_hf(config) -> dict:
    hf = llama.config_to_hf(config, MODEL_TYPE, ARCHITECTURE)
    del hf["attention_bias"], hf["mlp_bias"]  # fixed by the family: other biases are refused on export
    hf.update(windows_to_hf(config))
    return hf
