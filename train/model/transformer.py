"""The decoder-only transformer: embeddings, a stack of blocks, final norm, output head.

`forward(input_ids, doc_ids=None)` returns logits; the trainer's chunked cross-entropy uses
`hidden_states(...)` and `output_weight()` instead, since forward = softcap(hidden_states @ output_weight^T)
(`model.final_softcap`, applied by the loss too).
`doc_ids` [B, T] marks the document of each token in a packed window: attention stays inside a
document and positions restart at 0 at each document start.

With hyper-connections (`model.residual.hyper_connections`) the blocks carry n residual streams
[B, T, n, D]: the embedding is copied into each and `stream_head` collapses them before the final norm.
With value residuals the blocks also pass the first attention layer's values down the stack.
Multi-token prediction (`model.mtp`, train/model/mtp.py): `mtp_hidden_states(hidden, input_ids)` runs the
MTP modules on the final hidden states for the loss; forward and decoding never run them.

Mixture-of-experts protocol for the trainer (no ranks, devices or logging here):
    aux_loss()                 scalar: sum over MoE layers of the last forward's balancing + z-losses,
                               already multiplied by their coefficients (zero without MoE); add it to the loss
    expert_loads()             per MoE layer, [E + 2] choices per routed expert, of zero experts, and dropped,
                               accumulated over the forwards since reset_expert_loads()
    update_router_bias(loads)  the aux-loss-free bias step from GLOBAL loads (all-reduced over data
                               parallel ranks), once per optimizer step; then reset_expert_loads()
    moe_layer_ids()            the layer index of each entry of expert_loads() (for moe_metrics)
"""

import torch
import torch.nn.functional as F
from torch import nn

from train.model.attention import softcap
from train.model.block import Block, ShortcutMoEBlock
from train.model.config import ModelConfig, check_model_config
from train.model.documents import Documents
from train.model.kv_cache import KVCache
from train.model.moe.layer import MoE
from train.model.mtp import MTPModule, mtp_inputs
from train.model.norm import NORMS, build_norm
from train.model.position import build_additive_position
from train.model.residual import build_stream_head
from train.model.residual.parallel_block import ParallelBlock

# Linear layers that write into the residual stream get std / sqrt(2 * num_layers) at init
# (GPT-2 paper sec. 2.3), so the residual variance does not grow with depth.
RESIDUAL_PROJECTIONS = ("o_proj", "down_proj", "out_proj")


def build_block(config: ModelConfig, layer_idx: int) -> nn.Module:
    if config.shortcut_moe is not None:
        return ShortcutMoEBlock(config, layer_idx)
    return (ParallelBlock if config.residual.arrangement == "parallel" else Block)(config, layer_idx)


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        check_model_config(config)
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.position = build_additive_position(config.position, config.dim, config.max_seq_len)
        self.layers = nn.ModuleList(build_block(config, i) for i in range(config.num_layers))
        self.stream_head = build_stream_head(config)
        self.final_norm = build_norm(config.norm, config.dim)
        self.output = None if config.tie_embeddings else nn.Linear(config.dim, config.vocab_size, bias=False)
        # None: a forward holds whole windows. Context parallelism sets how its windows are split over devices
        # (train/model/documents.py's protocol); positions and attention masks then use window positions.
        self.sequence_split = None
        # the MTP blocks are like the last layer's (DeepSeek-V3's MTP module is an MoE block)
        self.mtp = nn.ModuleList(MTPModule(config, build_block(config, config.num_layers - 1))
                                 for _ in range(config.mtp.depth)) if config.mtp.depth else None
        self.init_weights()

    def embed_tokens(self, input_ids_BT) -> torch.Tensor:
        x_BTD = self.embed(input_ids_BT)
        if self.config.embedding_scale is not None:  # the scale rounded to the hidden dtype, as Gemma's reference
            x_BTD = x_BTD * torch.tensor(self.config.embedding_scale, dtype=x_BTD.dtype, device=x_BTD.device)
        return x_BTD

    def output_weight(self) -> torch.Tensor:
        """[vocab, dim] matrix of the output head (the embedding table when tied)."""
        return self.embed.weight if self.output is None else self.output.weight

    def hidden_states(self, input_ids_BT, doc_ids_BT=None, cache: KVCache | None = None,
                      inputs_BTD: torch.Tensor | None = None) -> torch.Tensor:
        """Final normed hidden states [B, T, D]. A pipeline stage's copy of the model (train/parallel/pipeline.py)
        holds only some of its modules: `inputs_BTD`, the previous stage's output, then replaces the embedding
        (the token ids still give the positions), and without a final norm the last layer's output is returned."""
        B, T = input_ids_BT.shape
        start = 0 if cache is None else cache.length
        if self.sequence_split is not None and doc_ids_BT is None:  # one document per window
            doc_ids_BT = torch.zeros_like(input_ids_BT)
        documents = None if doc_ids_BT is None else Documents(doc_ids_BT, self.sequence_split)
        if documents is not None:
            positions_BT = documents.positions_BT
        else:
            positions_BT = torch.arange(start, start + T, device=input_ids_BT.device).expand(B, T)
        x_BTD = self.embed_tokens(input_ids_BT) if inputs_BTD is None else inputs_BTD
        if self.position is not None:
            x_BTD = x_BTD + self.position(positions_BT).to(x_BTD.dtype)
        if self.stream_head is not None:  # n copies: the residual streams [B, T, n, D]
            x_BTD = x_BTD.unsqueeze(-2).expand(B, T, self.config.residual.hyper_connections.streams, -1).contiguous()
        values = None  # the first attention layer's values (value residual)
        for layer in self.layers:
            if self.config.residual.value_residual:
                x_BTD, values = layer(x_BTD, positions_BT, documents, cache, values)
            else:
                x_BTD = layer(x_BTD, positions_BT, documents, cache)
        if self.stream_head is not None:
            x_BTD = self.stream_head(x_BTD)
        if cache is not None:
            cache.advance(T)
        self.record_loads()
        return x_BTD if self.final_norm is None else self.final_norm(x_BTD)

    def record_loads(self) -> None:
        for moe in self.moe_layers():
            moe.record_loads()

    def mtp_hidden_states(self, hidden_BTD, input_ids_BT, doc_ids_BT=None) -> list[torch.Tensor]:
        """Module k's head-normed states [B, T - k, D] for k = 1 .. mtp.depth: row i predicts token i + k + 1
        (targets[:, i + k]). `hidden_BTD` is hidden_states(input_ids_BT, doc_ids_BT)."""
        states, previous_BTD = [], hidden_BTD
        for k, module in enumerate(self.mtp, start=1):
            tokens_BT, positions_BT, documents = mtp_inputs(k, input_ids_BT, doc_ids_BT)
            previous_BTD = module(self.embed_tokens(tokens_BT), previous_BTD[:, :-1], positions_BT, documents)
            states.append(previous_BTD)
        self.record_loads()  # the MTP blocks' routing (the main model's is recorded already)
        return states

    def forward(self, input_ids_BT, doc_ids_BT=None, cache: KVCache | None = None) -> torch.Tensor:
        """Logits [B, T, vocab]."""
        logits_BTV = F.linear(self.hidden_states(input_ids_BT, doc_ids_BT, cache), self.output_weight())
        return softcap(logits_BTV, self.config.final_softcap)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Normal(0, init_std) matrices and embeddings, zero biases and sinks, unit norm weights (zero
        for unit-offset norms), and each mixer's own init for its other parameters
        (`reset_extra_parameters`: SSM decays, time steps, convolutions). Covers every parameter, so a model built on the meta device can be materialised with
        `to_empty(device=...)` followed by `init_weights()`."""
        std = self.config.init_std
        residual_std = std / (2 * self.config.num_sublayers()) ** 0.5
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=residual_std if name.endswith(RESIDUAL_PROJECTIONS) else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, NORMS):
                (nn.init.zeros_ if getattr(module, "unit_offset", False) else nn.init.ones_)(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            if getattr(module, "sinks", None) is not None:
                nn.init.zeros_(module.sinks)
            if hasattr(module, "reset_extra_parameters"):
                module.reset_extra_parameters()
        nn.init.normal_(self.embed.weight, std=std)
        if self.position is not None and hasattr(self.position, "weight"):
            nn.init.normal_(self.position.weight, std=std)

    def moe_layers(self) -> list[MoE]:
        return [m for m in self.modules() if isinstance(m, MoE)]

    def moe_layer_ids(self) -> list[int]:
        mtp = [self.config.num_layers + k for k, module in enumerate(self.mtp or []) for m in module.modules()
               if isinstance(m, MoE)]  # the MTP blocks count on after the layers
        return [i for i, layer in enumerate(self.layers) for m in layer.modules() if isinstance(m, MoE)] + mtp

    def aux_loss(self) -> torch.Tensor:
        losses = [m.aux_loss for m in self.moe_layers()]
        # a plain zero on the weights' device (the weight itself may be a parallelised DTensor)
        return torch.stack(losses).sum() if losses else torch.zeros((), device=self.embed.weight.device)

    def expert_loads(self) -> list[torch.Tensor]:
        return [m.loads() for m in self.moe_layers()]

    def reset_expert_loads(self) -> None:
        for m in self.moe_layers():
            m.reset_loads()

    @torch.no_grad()
    def update_router_bias(self, loads: list[torch.Tensor]) -> None:
        for m, load in zip(self.moe_layers(), loads, strict=True):
            m.update_bias(load)
