"""Multi-token prediction (DeepSeek-V3, arXiv 2412.19437 sec. 2.2; `model.mtp`): D sequential modules
after the main model, module k predicting token i + k + 1 at position i. Each keeps the causal chain:

    h^k_i = block_k(eh_proj([enorm(Emb(t_{i+k})); hnorm(h^{k-1}_i)]))     h^0 = the main model's final hidden state
    P^k_{i+k+1} = softmax(head_norm(h^k_i) W_out^T)

with the embedding and the output head shared with the main model (eq. 21-23; the concatenation puts the
embedding first, as DeepSeek's weights and transformers' MtpLayer do, and the next module reads the
head-normed states). The block is a transformer block like the main model's last (an MoE block in
DeepSeek-V3). The loss (train/mtp_loss.py) is lambda / D times the sum of the modules' cross-entropies
(eq. 24-25). Inference never runs the modules; they stay in the checkpoints and the model folder, and the
DeepSeek-V3 export writes them where transformers' MtpModel reads them (model.layers.{num_layers + k}).
"""

import torch
from torch import nn

from train.model.config import ModelConfig
from train.model.documents import Documents
from train.model.norm import build_norm


class MTPModule(nn.Module):
    def __init__(self, config: ModelConfig, block: nn.Module):
        super().__init__()
        self.enorm = build_norm(config.norm, config.dim)
        self.hnorm = build_norm(config.norm, config.dim)
        self.eh_proj = nn.Linear(2 * config.dim, config.dim, bias=False)
        self.block = block
        self.head_norm = build_norm(config.norm, config.dim)

    def forward(self, embedded_BTD, previous_BTD, positions_BT, documents):
        x_BTD = self.eh_proj(torch.cat([self.enorm(embedded_BTD), self.hnorm(previous_BTD)], dim=-1))
        return self.head_norm(self.block(x_BTD, positions_BT, documents))


def mtp_inputs(k: int, input_ids_BT, doc_ids_BT):
    """Module k's tokens t_{i+k}, their positions and documents, for i = 0 .. T-k-1. The positions are the
    tokens' own (as transformers' MtpModel); rotary attention only sees their differences."""
    B, T = input_ids_BT.shape
    tokens_BT = input_ids_BT[:, k:]
    if doc_ids_BT is None:
        return tokens_BT, torch.arange(k, T, device=input_ids_BT.device).expand(B, T - k), None
    documents = Documents(doc_ids_BT[:, k:].contiguous())
    return tokens_BT, documents.positions_BT, documents
