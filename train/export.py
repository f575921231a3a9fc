"""Export a checkpoint of this project as a Hugging Face model directory.

    python -m train.export checkpoint=<dir> out=<dir>

Writes config.json + model.safetensors for the llama3, qwen3, gpt2, deepseek_v3 (dense), qwen3_next
(MoE-free) and mamba2 families, plus the
tokenizer files found next to the checkpoint (in it, or in its parent directory).
"""

from dataclasses import dataclass
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from train.model.checkpoint import load_model
from train.model.config import CONFIGS_DIR
from train.model.hf import TOKENIZER_FILES, export_hf


@dataclass
class ExportConfig:
    checkpoint: str = MISSING  # a directory with model.yaml + model.safetensors
    out: str = MISSING  # the Hugging Face directory to write


ConfigStore.instance().store(name="export_schema", node=ExportConfig)


def tokenizer_dir(checkpoint: Path) -> Path | None:
    for directory in (checkpoint, checkpoint.parent):
        if any((directory / name).is_file() for name in TOKENIZER_FILES[:2]):
            return directory
    return None


def export_checkpoint(checkpoint: str | Path, out: str | Path) -> Path:
    checkpoint = Path(checkpoint)
    return export_hf(load_model(checkpoint), out, tokenizer_dir(checkpoint))


@hydra.main(config_path=str(CONFIGS_DIR), config_name="export", version_base=None)
def main(cfg: ExportConfig) -> None:
    out = export_checkpoint(cfg.checkpoint, cfg.out)
    print(f"wrote {', '.join(sorted(p.name for p in out.iterdir()))} to {out}")


if __name__ == "__main__":
    main()
