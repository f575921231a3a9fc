"""Export a model folder of this project as a Hugging Face model folder.

    python -m train.export model_dir=<model folder> out=<dir>

Writes config.json + model.safetensors for every family with an adapter in train/model/hf/ (llama3,
qwen3, gpt2, qwen3_moe, deepseek_v3, qwen3_next, gpt_oss, longcat_flash, mamba2), plus the tokenizer
files found next to the model (in its folder, or in the folder above).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from common.paths import CONFIGS_DIR
from train.config import ModelFolderArgs
from train.model import load_model
from train.model.hf import TOKENIZER_FILES, export_hf


@dataclass
class ExportConfig(ModelFolderArgs):
    out: Optional[str] = None  # the Hugging Face folder to write


ConfigStore.instance().store(name="export_schema", node=ExportConfig)


def tokenizer_dir(model_dir: Path) -> Path | None:
    for directory in (model_dir, model_dir.parent):
        if any((directory / name).is_file() for name in TOKENIZER_FILES[:2]):
            return directory
    return None


def export_model_folder(model_dir: str | Path, out: str | Path) -> Path:
    model_dir = Path(model_dir)
    return export_hf(load_model(model_dir), out, tokenizer_dir(model_dir))


@hydra.main(config_path=str(CONFIGS_DIR), config_name="export", version_base=None)
def main(cfg) -> None:
    config: ExportConfig = OmegaConf.to_object(cfg)
    if not config.model_dir or not config.out:
        raise SystemExit("error: give both model_dir=<model folder> and out=<folder to write>")
    out = export_model_folder(config.model_dir, config.out)
    print(f"wrote {', '.join(sorted(p.name for p in out.iterdir()))} to {out}")


if __name__ == "__main__":
    main()
