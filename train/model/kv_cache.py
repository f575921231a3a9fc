"""Key/value cache for incremental decoding.

One object serves all layers of a model: each attention layer stores its keys and values under
its layer index, in buffers preallocated to `max_len` tokens, and the model advances `length`
once per forward. Sliding-window layers keep every token too and mask (the inspector reports the
bytes a window-sized ring buffer would need).
"""

import torch


class KVCache:
    def __init__(self, max_len: int):
        self.max_len = max_len
        self.length = 0  # tokens already cached, i.e. the position of the next token
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def update(self, layer_idx: int, k_BGTK: torch.Tensor, v_BGTK: torch.Tensor):
        """Store this step's keys/values; return all cached ones [B, G, length + T, K]."""
        end = self.length + k_BGTK.shape[2]
        if end > self.max_len:
            raise ValueError(f"KVCache holds max_len={self.max_len} tokens; this step needs {end}")
        if layer_idx not in self.keys:
            B, G, _, K = k_BGTK.shape
            self.keys[layer_idx] = k_BGTK.new_zeros(B, G, self.max_len, K)
            self.values[layer_idx] = v_BGTK.new_zeros(B, G, self.max_len, v_BGTK.shape[-1])
        self.keys[layer_idx][:, :, self.length : end] = k_BGTK
        self.values[layer_idx][:, :, self.length : end] = v_BGTK
        return self.keys[layer_idx][:, :, :end], self.values[layer_idx][:, :, :end]

    def advance(self, num_tokens: int) -> None:
        self.length += num_tokens
