"""`python -m train stage=pretrain model=<preset> data.path=<prepared dir> [overrides]`, also under torchrun."""

import hydra
from omegaconf import DictConfig, OmegaConf

from common.errors import one_line_errors
from common.help import install_help
from common.paths import CONFIGS_DIR
from train.config import TrainConfig
from train.parallel.world import close_world, exit_world
from train.trainer import Trainer

install_help(
    "python -m train: one training stage (pre-training, mid-training, SFT or DPO), on one process or under torchrun.",
    "python -m train [GROUP=NAME ...] [KEY=VALUE ...]   (or: python -m launch.local --nproc N KEY=VALUE ...)",
    ["python -m train stage=pretrain model=llama3_tiny data.path=outputs/data/stdlib trainer.max_steps=200",
     "python -m train stage=midtrain init.weights=outputs/runs/pretrain/model data.path=outputs/data/stdlib_long",
     "python -m train stage=sft init.weights=outputs/runs/midtrain/model trainer.max_steps=600"],
    ["model", "stage"], TrainConfig)


@hydra.main(config_path=str(CONFIGS_DIR), config_name="train", version_base=None)
def main(cfg: DictConfig) -> None:
    config: TrainConfig = OmegaConf.to_object(cfg)
    with one_line_errors():  # bad settings are refused while the trainer is built, before any step
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
