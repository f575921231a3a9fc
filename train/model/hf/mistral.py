"""Hugging Face adapter for Mistral (MistralForCausalLM; Mistral-7B): Llama without bias options
(transformers builds bias-free projections whatever config.json says) and one `sliding_window` for
every layer (null: full attention, as in Mistral-7B-v0.2 and later). mixtral.py extends it."""

from train.model.hf import llama

MODEL_TYPE, ARCHITECTURE, FAMILY = "mistral", "MistralForCausalLM", "mistral"

WEIGHTS = llama.WEIGHTS
IGNORED = llama.IGNORED


def config_from_hf(hf: dict, family: str = FAMILY) -> dict:
    windows = [hf.get("sliding_window")] * hf["num_hidden_layers"]  # MistralConfig ignores layer_types
    return llama.config_from_hf({**hf, "mlp_bias": False}, family=family, windows=windows, attention_bias=(False, False))


def config_to_hf(config, model_type: str = MODEL_TYPE, architecture: str = ARCHITECTURE) -> dict:
    hf = llama.config_to_hf(config, model_type, architecture)
    del hf["attention_bias"], hf["mlp_bias"]  # not options of this family: a model with biases is refused
    hf["sliding_window"] = config.layer_mixer(0).attention.window  # one window for all layers
    return hf
