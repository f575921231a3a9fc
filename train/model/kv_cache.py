"""Decoding cache: growing key/value buffers for attention, fixed-size states for recurrent mixers.

One object serves all layers of a model, and the model advances `length` once per forward.
- Attention layers store keys and values under their layer index, in buffers preallocated to
  `max_len` tokens (`update`). Sliding-window layers keep every token too and mask (the inspector
  reports the bytes a window-sized ring buffer would need). MLA stores its latent as the "keys" and
  its shared rope key as the "values": nothing per head.
- Linear-attention / SSM layers keep a fixed-size state per layer (`states[layer_idx]`, a dict such
  as {"conv": [B, C, kernel-1], "recurrent": [B, H, K, V]}) that they replace every step (`set_state`).
  A parallel hybrid layer uses both: keys/values for its attention heads, a state for its SSM heads.
"""

import torch


class KVCache:
    def __init__(self, max_len: int):
        self.max_len = max_len
        self.length = 0  # tokens already cached, i.e. the position of the next token
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.states: dict[int, dict[str, torch.Tensor]] = {}

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

    def get_state(self, layer_idx: int, name: str) -> torch.Tensor | None:
        """A recurrent layer's state `name`, or None before its first step (= the zero state)."""
        return self.states.get(layer_idx, {}).get(name)

    def set_state(self, layer_idx: int, name: str, state: torch.Tensor) -> None:
        self.states.setdefault(layer_idx, {})[name] = state

    def advance(self, num_tokens: int) -> None:
        self.length += num_tokens
