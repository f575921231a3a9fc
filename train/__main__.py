"""`python -m train stage=pretrain model=<preset> data.path=<prepared dir> [overrides]`, also under torchrun."""

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from train.config import TrainConfig
from train.distributed import close_world, exit_world
from train.trainer import Trainer

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")


@hydra.main(config_path=CONFIGS, config_name="train", version_base=None)
def main(cfg: DictConfig) -> None:
    config: TrainConfig = OmegaConf.to_object(cfg)
    trainer = Trainer(config)
    try:
        trainer.train()
    except BaseException:
        trainer.close()
        close_world()
        raise
    trainer.close()
    exit_world()


if __name__ == "__main__":
    main()
