"""Short causal depthwise convolution over time, then silu: the token-shift convolution in front of
the Mamba (Gu & Dao 2023, arXiv 2312.00752, sec. 3.4) and Gated DeltaNet scans.

Parameters are those of nn.Conv1d(C, C, kernel, groups=C) (weight [C, 1, kernel]) so checkpoints
map 1:1 to transformers' Mamba2Mixer.conv1d / Qwen3NextGatedDeltaNet.conv1d. Decoding keeps the last
kernel-1 inputs as the conv state. With documents, taps that reach into the previous document are
zeroed, so a packed document sees exactly the zero left-padding it would see alone. On CUDA with
causal_conv1d installed (model.linear_kernels=auto, kernels.py) a call without a state runs its kernel.
A split sequence (context parallelism, train/model/documents.py) convolves each run of window tokens
after the kernel-1 window tokens before it, from whichever device holds them.
"""

import torch
import torch.nn.functional as F
from torch import nn

from train.model.documents import Documents, is_split
from train.model.mixer import kernels


class CausalConv1d(nn.Conv1d):
    def __init__(self, channels: int, kernel: int, bias: bool, linear_kernels: str):
        super().__init__(channels, channels, kernel, groups=channels, padding=kernel - 1, bias=bias)
        self.linear_kernels = linear_kernels

    def state_bytes(self, dtype: torch.dtype) -> int:
        return self.in_channels * (self.kernel_size[0] - 1) * dtype.itemsize

    def forward(self, x_BTC, documents: Documents | None = None, state_BCk=None):
        """Returns silu(conv(x)) [B, T, C] and the new state [B, C, kernel-1] (the last inputs; None for a
        split sequence, which is never decoded)."""
        B, T, C = x_BTC.shape
        K = self.kernel_size[0]
        if is_split(documents):
            return self.split_forward(x_BTC, documents), None
        if state_BCk is None and kernels.conv_runs(self.linear_kernels, x_BTC, K):
            y_BTC = kernels.causal_conv(x_BTC, self.weight[:, 0], self.bias, documents)
            last_BCk = x_BTC[:, max(T - (K - 1), 0) :].transpose(1, 2)
            return y_BTC, F.pad(last_BCk, (K - 1 - last_BCk.shape[-1], 0))
        if state_BCk is None:
            state_BCk = x_BTC.new_zeros(B, C, K - 1)
        ext_BCL = torch.cat([state_BCk.to(x_BTC.dtype), x_BTC.transpose(1, 2)], dim=-1)  # L = K - 1 + T
        new_state_BCk = ext_BCL[..., ext_BCL.shape[-1] - (K - 1) :]
        if documents is None:
            y_BCT = F.conv1d(ext_BCL, self.weight, self.bias, groups=C)
        else:  # the state's inputs count as another document
            y_BCT = self.taps(ext_BCL, F.pad(documents.doc_ids_BT, (K - 1, 0), value=-1))
        return F.silu(y_BCT).transpose(1, 2), new_state_BCk

    def taps(self, ext_BCL, docs_BL):
        """conv(ext) [B, C, T] at its last T = L - (K-1) positions, each tap dropped where its input is in
        another document than the output's token (docs_BL: the document of each of the L inputs).
        The sum over the K taps of the shifted inputs times a same-document mask [B, 1, T]: tap k reads
        input t - (K-1) + k (ext index t + k); no [B, C, T, K] tensor, accumulated in fp32 as F.conv1d
        accumulates."""
        K = self.kernel_size[0]
        T = ext_BCL.shape[-1] - (K - 1)
        doc_ids_BT = docs_BL[:, K - 1 :]
        y_BCT = 0 if self.bias is None else self.bias.float()[:, None]
        for k in range(K):
            same_B1T = (docs_BL[:, k : k + T] == doc_ids_BT)[:, None]
            y_BCT = y_BCT + (ext_BCL[..., k : k + T] * same_B1T).float() * self.weight[:, :, k].float()
        return y_BCT.to(ext_BCL.dtype)

    def split_forward(self, x_BTC, documents: Documents):
        """silu(conv(x)) [B, T, C] of a split sequence: each of its runs of window tokens (one row r of
        B * pieces below) after the K-1 window tokens before it (zeros before the window's start, where
        any document id will do: their taps add nothing)."""
        split, K = documents.split, self.kernel_size[0]
        B, T, C = x_BTC.shape

        def rows(t_BT_):  # [B, T, ...] -> [B * pieces, T / pieces, ...], run after run
            return t_BT_.unflatten(1, (split.pieces, -1)).flatten(0, 1)

        before_rkC = split.previous(x_BTC, K - 1).flatten(0, 1)
        docs_before_rk = documents.previous_doc_ids(K - 1).flatten(0, 1)
        ext_rCL = torch.cat([before_rkC, rows(x_BTC)], dim=1).transpose(1, 2)
        y_rCt = self.taps(ext_rCL, torch.cat([docs_before_rk, rows(documents.doc_ids_BT)], dim=1))
        return F.silu(y_rCt).transpose(1, 2).reshape(B, T, C)
