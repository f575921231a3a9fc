"""Feed-forward blocks. Importing this package registers every kind (one line per kind)."""

from train.model.ffn import glu, mlp  # noqa: F401  registers "glu", "mlp"
from train.model.moe import layer  # noqa: F401  registers "moe" (after glu, its shared expert)
