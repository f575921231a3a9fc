"""Token mixers: one file per kind, registered by name (one import line per kind), built by `build_mixer`."""

from train.model.mixer import softmax_attention  # noqa: F401  registers "softmax_attention"
from train.model.mixer import mla  # noqa: F401  registers "mla"
from train.model.mixer import linear_attention  # noqa: F401  registers "linear_attention"
from train.model.mixer import gated_deltanet  # noqa: F401  registers "gated_deltanet"
from train.model.mixer import mamba2  # noqa: F401  registers "mamba2"
from train.model.mixer import parallel_hybrid  # noqa: F401  registers "parallel_hybrid" (after its parts)

from train.model.registry import MIXERS, lookup  # noqa: E402  (after the kinds have registered)


def build_mixer(config, model, layer_idx: int):
    """The mixer of kind `config.kind` (a MixerConfig) for layer `layer_idx` of `model` (a ModelConfig)."""
    return lookup(MIXERS, "mixer", config.kind)(config, model, layer_idx)
