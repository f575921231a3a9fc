"""A model folder of this project: `model.yaml` (the resolved ModelConfig) and `model.safetensors` (the
state dict), what a stage writes as its `model/` and the next stage starts from. `build_model` makes a
fresh one from a preset; train/model/load.py reads this format or a Hugging Face folder.
"""

import os
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from common.atomic import atomic_directory
from train.model.config import ModelConfig, apply_overrides, load_preset, to_model_config
from train.model.transformer import Transformer

CONFIG_FILE, WEIGHTS_FILE = "model.yaml", "model.safetensors"


def build_model(preset: str | ModelConfig, **overrides) -> Transformer:
    """A randomly initialised model from a preset name (configs/model/<preset>.yaml) or a config.

    Keyword overrides are dotted config keys, passed with ** when they contain dots:
    `build_model("llama3_tiny", num_layers=4, **{"mixers.full.attention.num_kv_heads": 1})`.
    To build without allocating memory: `with torch.device("meta"): build_model("llama3")`.
    """
    config = load_preset(preset) if isinstance(preset, str) else preset
    return Transformer(apply_overrides(config, overrides))


def save_model(model: Transformer, directory: str | os.PathLike) -> Path:
    """Write model.yaml + model.safetensors to `directory` atomically."""
    with atomic_directory(directory) as tmp:
        OmegaConf.save(OmegaConf.structured(model.config), tmp / CONFIG_FILE)
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, tmp / WEIGHTS_FILE)
    return Path(directory)


def is_model_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def read_model_folder(path: str | os.PathLike) -> Transformer:
    path = Path(path)
    if not (path / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{path}: has {CONFIG_FILE} but no {WEIGHTS_FILE} (an unfinished run's model folder?)")
    return model_from_state_dict(to_model_config(OmegaConf.load(path / CONFIG_FILE)), load_file(path / WEIGHTS_FILE))


def model_from_state_dict(config: ModelConfig, state_dict: dict[str, torch.Tensor]) -> Transformer:
    """Build on the meta device (no random init cost), then take the tensors as they are."""
    with torch.device("meta"):
        model = Transformer(config)
    model.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True, assign=True)
    for module in model.modules():  # non-persistent buffers (MoE load counters) start at zero
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.is_meta:
                setattr(module, name, torch.zeros_like(buffer, device="cpu"))
    return model
