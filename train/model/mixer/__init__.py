"""Token mixers. Importing this package registers every mixer kind (one line per kind)."""

from train.model.mixer import softmax_attention  # noqa: F401  registers "softmax_attention"
