"""The mixture-of-experts feed-forward (kind `moe`): router, routed experts, zero-computation experts,
shared expert.

    y = sum_{k: e_k < E} w_k expert_{e_k}(x)        routed experts (GShard/Switch top-k routing)
      + sum_{k: e_k >= E} w_k x                     zero-computation experts (LongCat-Flash, arXiv 2509.01322 eq. 2)
      + [sigmoid(g . x)] shared(x)                  shared expert (DeepSeekMoE arXiv 2401.06066; gate: Qwen2-MoE)

Dispatch: the (token, choice) pairs are sorted by expert; zero experts have the highest indices, so
their pairs sort last and are cut off before any expert runs (they cost no FLOPs and, under expert
parallelism, never leave the rank). Dropless by default; with `capacity_factor`, each expert keeps its
first `capacity` pairs in token order and the rest are dropped before dispatch (so they don't travel
either). The routed pairs go through `self.dispatch(x_ND, counts_E, experts)`, which runs the local
experts; train/parallel/expert.py swaps in an all-to-all dispatch. In bf16 on the CPU each expert's
group is padded to a multiple of rows (experts.py: oneDNN's kernels are built per shape) by pad slots
that gather a zero row and carry weight 0: they add nothing to any output or gradient.

Host syncs: none for a dropless layer without zero experts (every one of the T * k pairs is routed, a
size the host knows). With zero experts or a capacity, how many pairs reach the experts depends on the
routing, and that number sizes the experts' input: one device->host read per layer and forward
(`int(counts_E.sum())`). Running all T * k rows instead would spend the experts' FLOPs on the rows the
zero experts and the capacity exist to save.

Bookkeeping for the trainer (see Transformer.aux_loss / expert_loads / update_router_bias):
`aux_loss` holds the router's balancing + z-loss of the last forward; `choice_counts` [E + Z]
accumulates how often each expert was chosen since `reset_loads()`, `dropped_count` how many routed
choices the capacity dropped (non-persistent buffers). A forward only keeps its own counts
(`last_counts`); the Transformer adds them up after its forward (`record_loads`), so a recompute of the
layer inside backward (activation checkpointing) does not count twice, and the layer's forward stays
free of host-side bookkeeping that torch.compile(fullgraph=True) could not trace.
"""

import math

import torch
from torch import nn

from train.model.config import FFNConfig, ModelConfig
from train.model.ffn.glu import GLU
from train.model.moe.experts import RoutedExperts, group_multiple, padded_groups
from train.model.moe.router import Router
from train.model.registry import register_ffn


def local_dispatch(x_ND: torch.Tensor, counts_E: torch.Tensor, experts: RoutedExperts) -> torch.Tensor:
    """Every expert lives here: run them on the sorted rows."""
    return experts(x_ND, counts_E)


@register_ffn("moe")
class MoE(nn.Module):
    def __init__(self, config: FFNConfig, model: ModelConfig, layer_idx: int):
        super().__init__()
        c = config.moe
        self.num_experts, self.num_zero_experts, self.top_k = c.num_experts, c.num_zero_experts, c.router.top_k
        self.capacity_factor = c.capacity_factor
        self.router = Router(c.router, model.dim, c.num_experts + c.num_zero_experts)
        residual_std = model.init_std / (2 * model.num_sublayers()) ** 0.5
        self.experts = RoutedExperts(c.num_experts, model.dim, c.hidden_dim, config.activation, c.bias,
                                     c.swiglu_limit, c.swiglu_alpha, c.grouped_mm, model.init_std, residual_std)
        self.shared_expert = None
        if c.shared_hidden_dim:
            shared = FFNConfig(kind="glu", hidden_dim=c.shared_hidden_dim, activation=config.activation)
            self.shared_expert = GLU(shared, model, layer_idx)
        self.shared_gate = nn.Linear(model.dim, 1, bias=False) if c.shared_gate else None
        self.dispatch = local_dispatch
        self.register_buffer("choice_counts", torch.zeros(c.num_experts + c.num_zero_experts, dtype=torch.long), persistent=False)
        self.register_buffer("dropped_count", torch.zeros(1, dtype=torch.long), persistent=False)
        self.aux_loss = torch.zeros(())
        self.last_counts = self.last_dropped = None  # this forward's choices per expert and dropped choices

    def reset_loads(self) -> None:
        self.choice_counts.zero_()
        self.dropped_count.zero_()

    def record_loads(self) -> None:
        """Add the last forward's counts to the accumulated ones (once per forward, by the Transformer)."""
        if self.last_counts is not None:
            self.choice_counts += self.last_counts
            self.dropped_count += self.last_dropped
            self.last_counts = self.last_dropped = None

    def reset_extra_parameters(self) -> None:
        self.reset_loads()

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        D, K, E = x_BTD.shape[-1], self.top_k, self.num_experts
        x_TD = x_BTD.reshape(-1, D)
        weights_TK, choices_TK, self.aux_loss, counts_C = self.router(x_BTD, self.choice_counts)
        self.last_counts, self.last_dropped = counts_C, torch.zeros_like(self.dropped_count)
        counts_E = counts_C[:E]
        order_A = choices_TK.flatten().argsort(stable=True)  # every (token, choice) pair, by expert
        if self.capacity_factor is not None:
            capacity = math.ceil(self.capacity_factor * choices_TK.numel() / counts_C.numel())
            expert_A = choices_TK.flatten()[order_A]
            slot_A = torch.arange(order_A.numel(), device=order_A.device) - (counts_C.cumsum(0) - counts_C)[expert_A]
            # a pair past its expert's capacity moves behind every routed pair, with the zero experts' ones
            order_A = order_A[torch.where(slot_A < capacity, expert_A, E + self.num_zero_experts).argsort(stable=True)]
            kept_E = counts_E.clamp(max=capacity)
            self.last_dropped = (counts_E.sum() - kept_E.sum()).view(1)
            counts_E = kept_E
        if self.num_zero_experts or self.capacity_factor is not None:
            order_A = order_A[: int(counts_E.sum())]  # the routed pairs (the layer's one host sync, see above)
        token_A, weight_A = order_A // K, weights_TK.flatten().index_select(0, order_A)
        source_SD, T = x_TD, x_TD.shape[0]
        multiple = group_multiple(x_TD)
        if multiple > 1:  # each expert's group padded (experts.py) by slots that read a zero row with weight 0
            counts_E, slot_A = padded_groups(counts_E, multiple)  # from here A counts the pad slots too
            token_A = token_A.new_full((int(counts_E.sum()),), T).index_copy(0, slot_A, token_A)
            weight_A = weight_A.new_zeros(token_A.shape).index_copy(0, slot_A, weight_A)
            source_SD = torch.cat([x_TD, x_TD.new_zeros(1, D)])  # S = T + 1 rows, the last one zero
        y_AD = self.dispatch(source_SD.index_select(0, token_A), counts_E, self.experts)
        y_TD = torch.zeros_like(source_SD).index_add_(0, token_A, y_AD * weight_A[:, None])[:T]
        if self.num_zero_experts:
            zero_weight_T1 = weights_TK.masked_fill(choices_TK < E, 0).sum(dim=-1, keepdim=True)
            y_TD = y_TD + zero_weight_T1 * x_TD
        if self.shared_expert is not None:
            shared_TD = self.shared_expert(x_TD)
            y_TD = y_TD + (shared_TD if self.shared_gate is None else torch.sigmoid(self.shared_gate(x_TD)) * shared_TD)
        return y_TD.view_as(x_BTD)

    def loads(self) -> torch.Tensor:
        """[E + 2]: choices per routed expert, choices of any zero-computation expert (summed: they are
        interchangeable), then the routed choices the capacity dropped (0 when dropless)."""
        E = self.num_experts
        return torch.cat([self.choice_counts[:E], self.choice_counts[E:].sum(dim=0, keepdim=True), self.dropped_count])

    def update_bias(self, loads: torch.Tensor) -> None:
        """Aux-loss-free bias step from global `loads` [E + 2] (as returned by `loads`) of the router's
        choices (dropped ones included); the zero experts share their summed count equally."""
        E, Z = self.num_experts, self.num_zero_experts
        per_choice = loads[:E] if Z == 0 else torch.cat([loads[:E], loads[E : E + 1].expand(Z) / Z])
        self.router.update_bias(per_choice)
