"""Compose a Hydra config from configs/ without running an app: what launchers and tests use to check
overrides (a typo fails here, not in a queued job). Inside a running `@hydra.main` app (whose search path
is configs/ already) it composes in that context."""

import contextlib
from typing import Iterator, List

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from common.paths import CONFIGS_DIR


def compose(config_name: str, overrides: List[str] = ()) -> DictConfig:
    if GlobalHydra.instance().is_initialized():
        return hydra_compose(config_name=config_name, overrides=list(overrides))
    with initialize_config_dir(config_dir=str(CONFIGS_DIR), version_base=None):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


@contextlib.contextmanager
def composing() -> Iterator[None]:
    """Many compositions in a row (a sweep's points) inside one Hydra context over configs/."""
    if GlobalHydra.instance().is_initialized():
        yield
        return
    with initialize_config_dir(config_dir=str(CONFIGS_DIR), version_base=None):
        yield
