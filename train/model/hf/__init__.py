"""Hugging Face interop: one adapter module per family, each with MODEL_TYPE, ARCHITECTURE,
FAMILY, a WEIGHTS rule table (hf/weights.py), IGNORED HF tensors, config_from_hf and config_to_hf.

Export refuses a model that the target config.json cannot express: the exported config is read
back through the adapter and must give the same per-layer architecture (this catches sinks,
interleaved or partial rope, learned positions for Llama, ... without a list of special cases).
"""

import json
import os
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from common.atomic import atomic_directory
from data.tokenizer import token_name
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


INDEX_FILE = "model.safetensors.index.json"


def adapter_of(directory: Path):
    """The adapter for a Hugging Face folder and the ModelConfig its config.json alone gives (nothing is built)."""
    hf = json.loads((Path(directory) / "config.json").read_text())
    adapter = adapter_for_hf(hf, str(Path(directory) / "config.json"))
    config = to_model_config(adapter.config_from_hf(hf))
    if hasattr(adapter, "config_for_weights"):  # what config.json alone does not tell (DeepSeek-V3's MTP weights)
        config = adapter.config_for_weights(config, weight_files(directory))
    return adapter, config


def hf_model_config(directory: Path) -> ModelConfig:
    return adapter_of(directory)[1]


def weight_files(directory: Path) -> dict[str, Path]:
    """Which file holds each tensor of a folder: from model.safetensors.index.json when there is one
    (a sharded checkpoint), else from the headers of its *.safetensors files."""
    directory = Path(directory)
    if (directory / INDEX_FILE).is_file():
        files = {name: directory / file for name, file in json.loads((directory / INDEX_FILE).read_text())["weight_map"].items()}
        absent = sorted({f.name for f in files.values() if not f.is_file()})
        if absent:
            raise FileNotFoundError(f"{directory / INDEX_FILE} names weight files that are not there: {absent[:4]}")
        return files
    found = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            found.update({name: file for name in f.keys()})
    if not found:
        raise FileNotFoundError(f"{directory} has no *.safetensors weights (.bin is not supported)")
    return found


def load_hf_model(directory: Path) -> Transformer:
    adapter, config = adapter_of(directory)
    state = {k: v for f in sorted(set(weight_files(directory).values())) for k, v in load_file(f).items()}
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


TRAINING_ONLY = (".chunk_size", ".grouped_mm", ".aux_loss_coef", ".aux_loss_kind", ".z_loss_coef", ".bias_update_speed",
                 ".loss_weight")


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


EXPORT_DTYPES = {"bf16": (torch.bfloat16, "bfloat16"), "fp32": (torch.float32, "float32")}
SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(size: str | int) -> int:
    """Bytes of "5GB" (decimal, as transformers' max_shard_size), "500MiB" (binary) or a plain number."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(size))
    if not match or match.group(2).upper() not in SIZE_UNITS:
        raise ValueError(f"max_shard_size={size!r}: give a size like 5GB, 500MB, 2GiB or a number of bytes")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2).upper()])


def generation_config(tokenizer_dir: Path | None) -> dict:
    """bos/eos/pad token ids of the tokenizer files (tokenizer_config.json names them, tokenizer.json or
    its added_tokens_decoder gives their ids); empty when they name none."""
    if tokenizer_dir is None or not (Path(tokenizer_dir) / "tokenizer_config.json").is_file():
        return {}
    names = json.loads((Path(tokenizer_dir) / "tokenizer_config.json").read_text())
    ids = {entry.get("content"): int(i) for i, entry in (names.get("added_tokens_decoder") or {}).items()}
    vocab = Path(tokenizer_dir) / "tokenizer.json"
    tokenizer = Tokenizer.from_file(str(vocab)) if vocab.is_file() else None
    found = {}
    for key in ("bos", "eos", "pad"):
        name = token_name(names.get(f"{key}_token"))
        token_id = ids.get(name, tokenizer.token_to_id(name) if tokenizer is not None and name else None)
        if token_id is not None:
            found[f"{key}_token_id"] = token_id
    return found


def _write_weights(hf_state: dict, folder: Path, max_bytes: int, dtype: torch.dtype) -> None:
    """model.safetensors, or model-0000i-of-0000n.safetensors + model.safetensors.index.json when the
    weights exceed `max_bytes` (transformers' layout); each shard converted to `dtype` as it is written."""
    shards, size = [{}], 0
    for name, tensor in hf_state.items():
        nbytes = tensor.numel() * dtype.itemsize
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name], size = tensor, size + nbytes
    names = ["model.safetensors"] if len(shards) == 1 else [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    for name, shard in zip(names, shards):
        save_file({k: v.detach().to("cpu", dtype).contiguous() for k, v in shard.items()}, folder / name, metadata={"format": "pt"})
    if len(shards) > 1:
        total = sum(t.numel() * dtype.itemsize for t in hf_state.values())
        index = {"metadata": {"total_size": total}, "weight_map": {k: name for name, shard in zip(names, shards) for k in shard}}
        (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def export_hf(model: Transformer, out_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None,
              max_shard_size: str | int = "5GB", dtype: str = "fp32") -> Path:
    """Write config.json (its dtype says the weights'), the weights (sharded past `max_shard_size`),
    generation_config.json (the tokenizer's special ids) and the tokenizer files of tokenizer_dir, atomically."""
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype={dtype!r}; use one of {', '.join(EXPORT_DTYPES)}")
    out_dir, (torch_dtype, dtype_name) = Path(out_dir), EXPORT_DTYPES[dtype]
    max_bytes = parse_size(max_shard_size)
    config = {**hf_config(model.config), "dtype": dtype_name, "torch_dtype": dtype_name}  # torch_dtype: transformers < 5
    adapter = adapter_for_family(model.config.family)
    hf_state = to_hf(dict(model.state_dict()), adapter.WEIGHTS, model.config.num_layers)
    if hasattr(adapter, "finish_hf_weights"):  # layouts a rule table cannot express (LongCat's zero-expert rows)
        hf_state = adapter.finish_hf_weights(hf_state, model.config)
    generation = generation_config(tokenizer_dir)
    with atomic_directory(out_dir) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        _write_weights(hf_state, tmp, max_bytes, torch_dtype)
        if generation:
            (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        for name in TOKENIZER_FILES if tokenizer_dir is not None else ():
            if (Path(tokenizer_dir) / name).is_file():
                shutil.copy2(Path(tokenizer_dir) / name, tmp / name)
    return out_dir


__all__ = ["ADAPTERS", "export_hf", "hf_config", "hf_model_config", "load_hf_model", "weight_files"]
