"""Export a model folder of this project, or any step checkpoint of a run, as a Hugging Face model folder.

    python -m train.export model_dir=<folder> out=<dir> [max_shard_size=5GB] [dtype=fp32|bf16]

`model_dir` is a stage's `model/` folder (model.yaml + model.safetensors), a Hugging Face folder, or a
DCP step checkpoint `runs/<run>/checkpoints/step_N/` (its model config from the run's config.yaml two
levels up; only the "model" state is read, without a process group). Writes config.json (whose dtype
says the weights') + model.safetensors, or model-0000i-of-0000n.safetensors + model.safetensors.index.json
past max_shard_size, for every family with an adapter in train/model/hf/ (llama3, qwen3, gpt2, qwen3_moe,
deepseek_v3, qwen3_next, gpt_oss, longcat_flash, mamba2); generation_config.json with the tokenizer's
bos/eos/pad ids; and the tokenizer files: next to the model (its folder or the one above), or for a step
checkpoint the run's model/ folder's, else its init.weights' or prepared data's.

dtype defaults to fp32: an export is then exact (the weights a run trained, the logits it computed);
dtype=bf16 halves the files and is what most published checkpoints use.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import hydra
import torch
import torch.distributed.checkpoint as dcp
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from common.errors import one_line_errors
from common.paths import CONFIGS_DIR
from train import run_folder
from train.checkpoint import REPLICATED_FILE, is_complete, step_dirs
from train.config import ModelFolderArgs
from train.model import load_model
from train.model.config import to_model_config
from train.model.hf import TOKENIZER_FILES, export_hf
from train.model.transformer import Transformer
from train.stages import tokenizer_folder


@dataclass
class ExportConfig(ModelFolderArgs):
    out: Optional[str] = None  # the Hugging Face folder to write
    max_shard_size: str = "5GB"  # the largest weight file (5GB, 500MB, 2GiB); more weights: several files + index
    dtype: str = "fp32"  # of the written weights: fp32 (exact) or bf16 (half the size)


ConfigStore.instance().store(name="export_schema", node=ExportConfig)


def has_tokenizer(directory: Path) -> bool:
    return any((directory / name).is_file() for name in TOKENIZER_FILES[:2])


def tokenizer_dir(model_dir: Path) -> Path | None:
    return next((d for d in (model_dir, model_dir.parent) if has_tokenizer(d)), None)


def is_step_checkpoint(path: Path) -> bool:
    return path.parent.name == run_folder.CHECKPOINTS and path.name.startswith("step_")


def load_step_checkpoint(step_dir: Path) -> tuple[Transformer, Path | None]:
    """The model of a DCP step checkpoint (fp32, CPU) and where its tokenizer is."""
    if not is_complete(step_dir):
        lacks = ".metadata" if not (step_dir / ".metadata").is_file() else REPLICATED_FILE
        complete = [p.name for p in step_dirs(step_dir.parent) if is_complete(p)]
        pick = f"pick a complete one: {', '.join(complete)}" if complete else "this run has no complete one"
        raise ValueError(f"{step_dir}: not a complete step checkpoint (no {lacks}); {pick}")
    run_dir = step_dir.parent.parent
    if not (run_dir / run_folder.CONFIG).is_file():
        raise FileNotFoundError(f"{step_dir}: no {run_folder.CONFIG} in its run folder {run_dir} (the model config comes from it)")
    run = OmegaConf.load(run_dir / run_folder.CONFIG)
    with torch.device("meta"):
        model = Transformer(to_model_config(run.model))
    model.to_empty(device="cpu")
    # the checkpoint's "model" state (train/checkpoint.py: keys "model.<name>"), whole tensors, no process group
    dcp.load({"model": model.state_dict()}, checkpoint_id=str(step_dir), no_dist=True)
    model.reset_expert_loads()  # non-persistent buffers: in no state dict
    candidates = [run_dir / run_folder.MODEL, tokenizer_folder(run)]
    return model, next((d for d in candidates if has_tokenizer(d)), None)


def export(model_dir: str | Path, out: str | Path, max_shard_size: str = "5GB", dtype: str = "fp32") -> Path:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir}: no such folder; give a model folder or a run's checkpoints/step_N")
    if is_step_checkpoint(model_dir):
        model, tokenizer = load_step_checkpoint(model_dir)
    else:
        model, tokenizer = load_model(model_dir), tokenizer_dir(model_dir)
    return export_hf(model, out, tokenizer, max_shard_size=max_shard_size, dtype=dtype)


@hydra.main(config_path=str(CONFIGS_DIR), config_name="export", version_base=None)
def main(cfg) -> None:
    config: ExportConfig = OmegaConf.to_object(cfg)
    if not config.model_dir or not config.out:
        raise SystemExit("error: give both model_dir=<model folder or step checkpoint> and out=<folder to write>")
    with one_line_errors():
        out = export(config.model_dir, config.out, config.max_shard_size, config.dtype)
    print(f"wrote {', '.join(sorted(p.name for p in out.iterdir()))} to {out}")


if __name__ == "__main__":
    main()
