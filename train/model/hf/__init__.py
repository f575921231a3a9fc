"""Hugging Face interop: one adapter module per family, each with MODEL_TYPE, ARCHITECTURE,
FAMILY, a WEIGHTS rule table (hf/weights.py), IGNORED HF tensors, config_from_hf and config_to_hf.

Export refuses a model that the target config.json cannot express: the exported config is read
back through the adapter and must give the same per-layer architecture (this catches sinks,
interleaved or partial rope, learned positions for Llama, ... without a list of special cases).
"""

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from safetensors.torch import load_file, save_file

from common.atomic import atomic_directory
from train.model.config import ModelConfig, to_model_config
from train.model.folder import model_from_state_dict
from train.model.hf import deepseek_v3, gemma3, gpt2, gpt_oss, llama, longcat_flash, mamba2, olmo2, qwen3, qwen3_moe, qwen3_next
from train.model.hf import mistral, mixtral, qwen2
from train.model.hf.weights import from_hf, to_hf
from train.model.transformer import Transformer

ADAPTERS = (gpt2, llama, mistral, qwen2, qwen3, mixtral, qwen3_moe, deepseek_v3, qwen3_next, gpt_oss, longcat_flash, mamba2,
            gemma3, olmo2)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def adapter_for_hf(hf: dict, where: str):
    architectures = hf.get("architectures") or []
    for adapter in ADAPTERS:
        if hf.get("model_type") == adapter.MODEL_TYPE or adapter.ARCHITECTURE in architectures:
            return adapter
    raise ValueError(
        f"{where}: model_type={hf.get('model_type')!r} architectures={architectures} is not supported; "
        f"supported model_type: {[a.MODEL_TYPE for a in ADAPTERS]}"
    )


def adapter_for_family(family: str):
    for adapter in ADAPTERS:
        if adapter.FAMILY == family:
            return adapter
    raise ValueError(
        f"model.family={family!r} has no Hugging Face adapter; exportable families: {[a.FAMILY for a in ADAPTERS]}"
    )


def load_hf_model(directory: Path) -> Transformer:
    hf = json.loads((directory / "config.json").read_text())
    adapter = adapter_for_hf(hf, str(directory / "config.json"))
    config = to_model_config(adapter.config_from_hf(hf))
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{directory} has config.json but no *.safetensors weights (.bin is not supported)")
    state = {k: v for f in files for k, v in load_file(f).items()}
    return model_from_state_dict(config, from_hf(state, adapter.WEIGHTS, config.num_layers, adapter.IGNORED))


def _architecture(config: ModelConfig) -> dict:
    """Flat dict of everything that changes the computation, with defaults resolved."""
    arch = asdict(config)
    for key in ("family", "init_std", "attention_backend", "linear_kernels", "mixers", "ffns", "layer_mixers", "layer_ffns", "shortcut_moe"):
        del arch[key]
    if config.position.kind != "yarn":
        del arch["position"]["yarn"]
    if config.norm.kind != "layernorm":
        del arch["norm"]["bias"]
    if config.shortcut_moe is not None:
        arch["shortcut_moe"] = asdict(config.ffns[config.shortcut_moe])
    for i in range(config.num_sublayers()):
        mixer, ffn = asdict(config.layer_mixer(i)), asdict(config.layer_ffn(i))
        attn = mixer.get("attention") or {}
        attn["num_kv_heads"] = attn.get("num_kv_heads") or attn.get("num_heads")
        attn["head_dim"] = attn.get("head_dim") or config.dim // attn.get("num_heads", 1)
        if "scale_dim" in attn:  # None means head_dim, and a mixer's position None the model's
            attn["scale_dim"], attn["position"] = attn["scale_dim"] or attn["head_dim"], attn["position"] or asdict(config.position)
        arch[f"layer{i}"] = {"mixer": mixer, "ffn": ffn}
    # the chunk length of a chunked scan, the expert kernel and the linear mixers' kernels change the
    # schedule, not the function computed; balancing losses and the bias step are training settings
    return {k: v for k, v in _flatten(arch).items() if not k.endswith(TRAINING_ONLY)}


TRAINING_ONLY = (".chunk_size", ".grouped_mm", ".aux_loss_coef", ".aux_loss_kind", ".z_loss_coef", ".bias_update_speed")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        out.update(_flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def hf_config(config: ModelConfig) -> dict:
    """config.json for `config`, or ValueError naming the fields the HF architecture lacks."""
    adapter = adapter_for_family(config.family)
    hf = adapter.config_to_hf(config)
    ours, theirs = _architecture(config), _architecture(to_model_config(adapter.config_from_hf(hf)))
    differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    if differ:
        details = ", ".join(f"{k}={ours.get(k)!r} (exported as {theirs.get(k)!r})" for k in differ[:6])
        raise ValueError(f"{adapter.ARCHITECTURE} cannot express this model: {details}")
    return hf


def export_hf(model: Transformer, out_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None) -> Path:
    """Write config.json + model.safetensors (+ tokenizer files found in tokenizer_dir) atomically."""
    out_dir = Path(out_dir)
    config = hf_config(model.config)
    adapter = adapter_for_family(model.config.family)
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_directory(out_dir) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        hf_state = to_hf(state, adapter.WEIGHTS, model.config.num_layers)
        if hasattr(adapter, "finish_hf_weights"):  # layouts a rule table cannot express (LongCat's zero-expert rows)
            hf_state = adapter.finish_hf_weights(hf_state, model.config)
        save_file(hf_state, tmp / "model.safetensors", metadata={"format": "pt"})
        for name in TOKENIZER_FILES if tokenizer_dir is not None else ():
            if (Path(tokenizer_dir) / name).is_file():
                shutil.copy2(Path(tokenizer_dir) / name, tmp / name)
    return out_dir


__all__ = ["ADAPTERS", "export_hf", "hf_config", "load_hf_model"]
