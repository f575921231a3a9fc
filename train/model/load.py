"""Load a model from either kind of folder: this project's (model.yaml + model.safetensors,
train/model/folder.py) or Hugging Face's (config.json + *.safetensors, sharded with
model.safetensors.index.json or not, through train/model/hf/).

`read_weights` reads just the regions of our tensors that a caller asks for (a rank's shard rows) with
safetensors' lazy slices, one tensor at a time, in the dtype stored: the trainer fills a sharded model
with it, and no process ever holds the whole model. A tensor that an adapter rule fuses or splits
(GPT-2's c_attn holds q, k and v; GPT-OSS's gate_up interleaves two) is read whole, then cut.
"""

import os
from pathlib import Path
from typing import Iterator

import torch
from omegaconf import OmegaConf
from safetensors import safe_open

from train.model import hf
from train.model.config import ModelConfig, to_model_config
from train.model.folder import CONFIG_FILE, WEIGHTS_FILE, is_model_folder, read_model_folder
from train.model.hf.weights import Rule, Source, hf_sources
from train.model.transformer import Transformer

Region = tuple[slice, ...]  # one slice per dim of the full tensor


def _not_a_model_folder(path: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"{path} is not a model folder: expected {CONFIG_FILE} + {WEIGHTS_FILE} (this project) "
        "or config.json + *.safetensors (Hugging Face)"
    )


def load_model(path: str | os.PathLike) -> Transformer:
    """Load a project model folder or a Hugging Face model folder (fp32, on CPU)."""
    path = Path(path)
    if is_model_folder(path):
        return read_model_folder(path)
    if (path / "config.json").is_file():
        return hf.load_hf_model(path)
    raise _not_a_model_folder(path)


def model_config(path: str | os.PathLike) -> ModelConfig:
    """The model config of either kind of folder, from its config file alone (no weights are read)."""
    path = Path(path)
    if is_model_folder(path):
        return to_model_config(OmegaConf.load(path / CONFIG_FILE))
    if (path / "config.json").is_file():
        return hf.hf_model_config(path)
    raise _not_a_model_folder(path)


def _sources(path: Path, config: ModelConfig) -> tuple[dict[str, Path], list[Source]]:
    files = hf.weight_files(path)
    if is_model_folder(path):  # our names already: each tensor is its own source
        return files, [Source((name,), (name,), Rule((name,), name), experts=False) for name in files]
    adapter, _ = hf.adapter_of(path)
    return files, hf_sources(files, adapter.WEIGHTS, config.num_layers, adapter.IGNORED)


def _read(file: Path, name: str, region: Region | None = None) -> torch.Tensor:
    # opened per tensor: closing unmaps the file, so the pages read do not stay resident in this process
    with safe_open(file, "pt") as f:
        return f.get_slice(name)[region] if region else f.get_tensor(name)


def _read_region(files: dict[str, Path], source: Source, region: Region) -> torch.Tensor:
    """`region` of our tensor of a direct source: the same region of the HF tensor (its last two dims
    swapped for a transposed rule; for experts, the experts region[0] selects)."""
    inner = region[1:] if source.experts else region
    transpose = source.rule.transpose and len(inner) >= 2
    if transpose:
        inner = (*inner[:-2], inner[-1], inner[-2])
    pieces = [_read(files[name], name, inner) for name in (source.hf[region[0]] if source.experts else source.hf)]
    tensor = torch.stack(pieces) if source.experts else pieces[0]
    return tensor.transpose(-2, -1) if transpose else tensor


def read_weights(path: str | os.PathLike, config: ModelConfig, regions: dict[str, Region]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, the region of that tensor) for every name in `regions`, read from a model folder of either
    kind, one source at a time and in the stored dtype; ValueError naming the tensors the folder lacks."""
    path = Path(path)
    files, sources = _sources(path, config)
    missing = sorted(set(regions) - {name for source in sources for name in source.ours})
    if missing:
        raise ValueError(f"{path} has no weights for {missing[:8]} (is it a model of this config?)")
    for source in sources:
        wanted = [name for name in source.ours if name in regions]
        if wanted and source.direct:
            yield wanted[0], _read_region(files, source, regions[wanted[0]])
        elif wanted:  # fused or interleaved: the whole HF tensor, then our parts of it
            whole = source.combine([_read(files[name], name) for name in source.hf])
            for name in wanted:
                yield name, whole[name][regions[name]]
