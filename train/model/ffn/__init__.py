"""Feed-forward blocks: one file per kind, registered by name (one import line per kind), built by `build_ffn`."""

from train.model.ffn import glu, mlp  # noqa: F401  registers "glu", "mlp"
from train.model.moe import layer  # noqa: F401  registers "moe" (after glu, its shared expert)

from train.model.registry import FFNS, lookup  # noqa: E402  (after the kinds have registered)


def build_ffn(config, model, layer_idx: int):
    """The feed-forward of kind `config.kind` (an FFNConfig) for layer `layer_idx` of `model` (a ModelConfig)."""
    return lookup(FFNS, "ffn", config.kind)(config, model, layer_idx)
