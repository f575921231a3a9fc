"""Save and load models.

Project checkpoint: a directory with `model.yaml` (the resolved ModelConfig) and
`model.safetensors` (the state dict). A directory with `config.json` is read as a Hugging Face
model through the adapters in train/model/hf/.
"""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

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


@contextlib.contextmanager
def atomic_directory(directory: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it replaces `directory` in one rename, on
    failure it is removed, so a crash never leaves a half-written folder under the final name."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp", dir=directory.parent))
    try:
        yield tmp
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_model(model: Transformer, directory: str | os.PathLike) -> Path:
    """Write model.yaml + model.safetensors to `directory` atomically."""
    with atomic_directory(directory) as tmp:
        OmegaConf.save(OmegaConf.structured(model.config), tmp / CONFIG_FILE)
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, tmp / WEIGHTS_FILE)
    return Path(directory)


def load_model(path: str | os.PathLike) -> Transformer:
    """Load a project checkpoint directory or a Hugging Face model directory (fp32, on CPU)."""
    from train.model import hf  # late import: hf adapters build on this module's helpers

    path = Path(path)
    if (path / CONFIG_FILE).is_file():
        config = to_model_config(OmegaConf.load(path / CONFIG_FILE))
        return model_from_state_dict(config, load_file(path / WEIGHTS_FILE))
    if (path / "config.json").is_file():
        return hf.load_hf_model(path)
    raise FileNotFoundError(
        f"{path} is not a model directory: expected {CONFIG_FILE} + {WEIGHTS_FILE} (this project) "
        "or config.json + *.safetensors (Hugging Face)"
    )


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
