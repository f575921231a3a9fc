"""`python -m train stage=pretrain model=<preset> data.path=<prepared dir> [overrides]`, also under torchrun."""

import hydra
from omegaconf import DictConfig, OmegaConf

from common.paths import CONFIGS_DIR
from train.config import TrainConfig
from train.parallel.world import close_world, exit_world
from train.trainer import Trainer


@hydra.main(config_path=str(CONFIGS_DIR), config_name="train", version_base=None)
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
