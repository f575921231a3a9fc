"""Token mixers. Importing this package registers every mixer kind (one line per kind)."""

from train.model.mixer import softmax_attention  # noqa: F401  registers "softmax_attention"
from train.model.mixer import mla  # noqa: F401  registers "mla"
from train.model.mixer import linear_attention  # noqa: F401  registers "linear_attention"
from train.model.mixer import gated_deltanet  # noqa: F401  registers "gated_deltanet"
from train.model.mixer import mamba2  # noqa: F401  registers "mamba2"
from train.model.mixer import parallel_hybrid  # noqa: F401  registers "parallel_hybrid" (after its parts)
