"""Short causal depthwise convolution over time, then silu: the token-shift convolution in front of
the Mamba (Gu & Dao 2023, arXiv 2312.00752, sec. 3.4) and Gated DeltaNet scans.

Parameters are those of nn.Conv1d(C, C, kernel, groups=C) (weight [C, 1, kernel]) so checkpoints
map 1:1 to transformers' Mamba2Mixer.conv1d / Qwen3NextGatedDeltaNet.conv1d. Decoding keeps the last
kernel-1 inputs as the conv state. With documents, taps that reach into the previous document are
zeroed, so a packed document sees exactly the zero left-padding it would see alone.
"""

import torch
import torch.nn.functional as F
from torch import nn

from train.model.documents import Documents


class CausalConv1d(nn.Conv1d):
    def __init__(self, channels: int, kernel: int, bias: bool):
        super().__init__(channels, channels, kernel, groups=channels, padding=kernel - 1, bias=bias)

    def state_bytes(self, dtype: torch.dtype) -> int:
        return self.in_channels * (self.kernel_size[0] - 1) * dtype.itemsize

    def forward(self, x_BTC, documents: Documents | None = None, state_BCk=None):
        """Returns silu(conv(x)) [B, T, C] and the new state [B, C, kernel-1] (the last inputs)."""
        B, T, C = x_BTC.shape
        K = self.kernel_size[0]
        if state_BCk is None:
            state_BCk = x_BTC.new_zeros(B, C, K - 1)
        ext_BCL = torch.cat([state_BCk.to(x_BTC.dtype), x_BTC.transpose(1, 2)], dim=-1)  # L = K - 1 + T
        new_state_BCk = ext_BCL[..., ext_BCL.shape[-1] - (K - 1) :]
        if documents is None:
            y_BCT = F.conv1d(ext_BCL, self.weight, self.bias, groups=C)
        else:
            # window t holds inputs t-K+1 .. t; drop the taps from another document
            windows_BCTK = ext_BCL.unfold(-1, K, 1)
            doc_ids_BT = documents.doc_ids_BT
            docs_BTK = F.pad(doc_ids_BT, (K - 1, 0), value=-1).unfold(-1, K, 1)
            same_B1TK = (docs_BTK == doc_ids_BT[..., None])[:, None]
            y_BCT = torch.einsum("bctk,ck->bct", windows_BCTK * same_B1TK, self.weight[:, 0])
            if self.bias is not None:
                y_BCT = y_BCT + self.bias[:, None]
        return F.silu(y_BCT).transpose(1, 2), new_state_BCk
