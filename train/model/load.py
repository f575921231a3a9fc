"""Load a model from either kind of folder: this project's (model.yaml + model.safetensors,
train/model/folder.py) or Hugging Face's (config.json + *.safetensors, through train/model/hf/)."""

import os
from pathlib import Path

from train.model import hf
from train.model.folder import CONFIG_FILE, WEIGHTS_FILE, is_model_folder, read_model_folder
from train.model.transformer import Transformer


def load_model(path: str | os.PathLike) -> Transformer:
    """Load a project model folder or a Hugging Face model folder (fp32, on CPU)."""
    path = Path(path)
    if is_model_folder(path):
        return read_model_folder(path)
    if (path / "config.json").is_file():
        return hf.load_hf_model(path)
    raise FileNotFoundError(
        f"{path} is not a model folder: expected {CONFIG_FILE} + {WEIGHTS_FILE} (this project) "
        "or config.json + *.safetensors (Hugging Face)"
    )
