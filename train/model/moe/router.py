"""Top-k token-choice router: scores, choice, weights, and the balancing terms.

Scores by `kind` (all in fp32, as DeepSeek-V3 and LongCat-Flash keep their gates in fp32):
- softmax:      s = softmax(W x)                (Qwen3-MoE, Mixtral, LongCat-Flash)
- sigmoid:      s = sigmoid(W x)                (DeepSeek-V3, arXiv 2412.19437 eq. 15)
- topk_softmax: the top k of the logits W x + b, weights softmax over those k (GPT-OSS)
The choice is the top k of s + b_corr, where b_corr is the auxiliary-loss-free balancing bias
(DeepSeek-V3 sec. 2.1.2; zero unless `score_correction_bias`) that enters the choice only. With
num_groups > 1 the choice is group-limited (DeepSeek-V3 `n_group`/`topk_group`): each group is
scored by the sum of its two best s + b_corr and a token may only pick experts in its topk_groups
best groups. Weights are s at the chosen experts, optionally renormalised to sum to one, times
`scaling_factor` (routed_scaling_factor).

Balancing losses (already multiplied by their coefficients, summed into `aux_loss`):
- global_batch: alpha * E * sum_e f_e P_e (Switch Transformer arXiv 2101.03961 eq. 4-6), f_e the
  fraction of choices that went to e and P_e the mean normalised score s_e / sum s, both over every
  token of the forward; f_e also counts the tokens of the earlier micro-batches of the same optimizer
  step (`counts_so_far`, the layer's accumulated loads), the global-batch balance of Qiu et al.
  (arXiv 2501.11873) on one rank.
- sequence: DeepSeek-V3 eq. 17-20, the same product per sequence, averaged over sequences.
- z-loss: beta * mean_t logsumexp(W x_t)^2 (ST-MoE arXiv 2202.08906 eq. 5).
"""

import torch
import torch.nn.functional as F
from torch import nn

from train.model.config import RouterConfig
from train.model.precision import fp32_matmuls

KINDS = ("softmax", "sigmoid", "topk_softmax")
AUX_LOSS_KINDS = ("global_batch", "sequence")


class Router(nn.Module):
    def __init__(self, config: RouterConfig, dim: int, num_choices: int):
        """`num_choices`: routed experts + zero-computation experts."""
        super().__init__()
        if config.kind not in KINDS:
            raise ValueError(f"router.kind={config.kind!r}; use one of {KINDS}")
        if config.aux_loss_kind not in AUX_LOSS_KINDS:
            raise ValueError(f"router.aux_loss_kind={config.aux_loss_kind!r}; use one of {AUX_LOSS_KINDS}")
        if num_choices % config.num_groups or config.topk_groups > config.num_groups:
            raise ValueError(f"router: {num_choices} experts in num_groups={config.num_groups} groups, topk_groups={config.topk_groups}")
        if config.top_k > num_choices:
            raise ValueError(f"router.top_k={config.top_k} exceeds the {num_choices} experts")
        self.config = config
        self.num_choices = num_choices
        self.gate = nn.Linear(dim, num_choices, bias=config.bias)
        # persistent: it is part of the model (HF e_score_correction_bias); updated by update_bias only
        bias = torch.zeros(num_choices) if config.score_correction_bias else None
        self.register_buffer("score_correction_bias", bias)

    def reset_extra_parameters(self) -> None:
        if self.score_correction_bias is not None:
            self.score_correction_bias.zero_()

    def forward(self, x_BTD: torch.Tensor, counts_so_far_E: torch.Tensor | None = None):
        """Returns weights [T, k] (x's dtype), chosen experts [T, k] (int64), the aux loss (scalar)
        and the choices per expert [num_choices] of this forward. T = B * T' flattened."""
        c, B = self.config, x_BTD.shape[0]
        x_TD = x_BTD.reshape(-1, x_BTD.shape[-1])
        with fp32_matmuls(x_TD):
            logits_TE = F.linear(x_TD.float(), self.gate.weight.float(), None if self.gate.bias is None else self.gate.bias.float())
        if c.kind == "topk_softmax":
            top_logits_TK, experts_TK = logits_TE.topk(c.top_k, dim=-1)
            weights_TK = top_logits_TK.softmax(dim=-1)
            scores_TE = logits_TE.softmax(dim=-1)  # for the balancing loss only
        else:
            scores_TE = logits_TE.softmax(dim=-1) if c.kind == "softmax" else logits_TE.sigmoid()
            experts_TK = self.choose(scores_TE.detach())
            weights_TK = scores_TE.gather(1, experts_TK)
            if c.renormalize:
                weights_TK = weights_TK / (weights_TK.sum(dim=-1, keepdim=True) + 1e-20)
        weights_TK = weights_TK * c.scaling_factor
        # choices per expert; a scatter-add, since bincount sizes its output from the data (a host sync on CUDA)
        counts_E = torch.zeros(self.num_choices, dtype=torch.long, device=experts_TK.device).scatter_add_(
            0, experts_TK.flatten(), torch.ones_like(experts_TK.flatten()))
        aux = logits_TE.new_zeros(())
        if c.aux_loss_coef:
            aux = aux + c.aux_loss_coef * self.balance_loss(scores_TE, experts_TK, counts_E, counts_so_far_E, B)
        if c.z_loss_coef:
            aux = aux + c.z_loss_coef * logits_TE.logsumexp(dim=-1).square().mean()
        return weights_TK.to(x_BTD.dtype), experts_TK, aux, counts_E

    def choose(self, scores_TE: torch.Tensor) -> torch.Tensor:
        c = self.config
        choice_TE = scores_TE if self.score_correction_bias is None else scores_TE + self.score_correction_bias
        if c.num_groups > 1:
            T = choice_TE.shape[0]
            grouped_TGe = choice_TE.view(T, c.num_groups, -1)
            group_scores_TG = grouped_TGe.topk(2, dim=-1).values.sum(dim=-1)
            best_TG = group_scores_TG.topk(c.topk_groups, dim=-1).indices
            keep_TG = torch.zeros_like(group_scores_TG, dtype=torch.bool).scatter_(1, best_TG, True)
            choice_TE = grouped_TGe.masked_fill(~keep_TG[:, :, None], float("-inf")).view(T, -1)
        return choice_TE.topk(c.top_k, dim=-1).indices

    def balance_loss(self, scores_TE, experts_TK, counts_E, counts_so_far_E, B: int) -> torch.Tensor:
        E, K = self.num_choices, self.config.top_k
        probs_TE = scores_TE / scores_TE.sum(dim=-1, keepdim=True)
        if self.config.aux_loss_kind == "sequence":
            probs_BSE = probs_TE.view(B, -1, E)
            S = probs_BSE.shape[1]
            counts_BE = torch.zeros(B, E, device=scores_TE.device).scatter_add_(
                1, experts_TK.view(B, S * K), torch.ones(B, S * K, device=scores_TE.device))
            f_BE = counts_BE * E / (K * S)  # eq. 18: f_i = E / (K T) * count_i
            return (f_BE * probs_BSE.mean(dim=1)).sum(dim=-1).mean()
        total_E = counts_E.float() if counts_so_far_E is None else counts_E.float() + counts_so_far_E.float()
        f_E = total_E / total_E.sum()
        return E * (f_E * probs_TE.mean(dim=0)).sum()

    @torch.no_grad()
    def update_bias(self, loads_E: torch.Tensor) -> None:
        """DeepSeek-V3's sign rule: b_e += gamma * sign(mean load - load_e), from global loads."""
        if self.score_correction_bias is None or not self.config.bias_update_speed:
            return
        loads_E = loads_E.to(self.score_correction_bias.device, torch.float32)
        self.score_correction_bias += self.config.bias_update_speed * torch.sign(loads_E.mean() - loads_E)
