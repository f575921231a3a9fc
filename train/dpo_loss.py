"""Preference optimisation: the pair losses, the implicit rewards, and sequence log-probabilities.

DPO (Rafailov et al. 2023, arXiv 2305.18290) trains the policy pi on pairs (prompt x, chosen y_w, rejected
y_l) against a frozen reference pi_ref, with the implicit reward r(y) = beta * (log pi(y|x) - log pi_ref(y|x)):

    sigmoid  -(1 - eps) * log sigmoid(r_w - r_l) - eps * log sigmoid(r_l - r_w)
             eps = 0 is DPO; eps > 0 is conservative DPO (cDPO, Mitchell 2023): the label is wrong with probability eps
    ipo      (h - 1 / (2 * beta))^2 with h the difference of the per-token average log-ratios
             (IPO, Azar et al. 2023, arXiv 2310.12036, Eq. 17; averaged per token as TRL does, after the authors)

Two losses need no reference model; both use the per-token average log-prob a(y) = log pi(y|x) / |y|:

    simpo    -(1 - eps) * log sigmoid(m) - eps * log sigmoid(-m), m = beta * (a(y_w) - a(y_l)) - gamma
             (SimPO, Meng et al. 2024, arXiv 2405.14734, Eq. 6; TRL's CPOTrainer with loss_type="simpo", cpo_alpha=0)
    orpo     -a(y_w) - beta * log sigmoid(log odds(y_w) - log odds(y_l)), odds(y) = p / (1 - p), p = exp(a(y))
             (ORPO, Hong et al. 2024, arXiv 2403.07691, Eqs. 4-7: beta is the paper's lambda; TRL's ORPOTrainer).
             The first term is the chosen response's NLL per token (the paper's L_SFT), a per-pair value like
             the others, so the batch loss is a mean over pairs. (TRL averages its NLL over all the chosen
             tokens of a batch, prompts included; on one pair with no prompt to learn the two agree.)

The log-probabilities are sums over the response tokens (`sequence_logps`). Rewards are returned detached:
they are for logging (reward accuracy and margin), the gradient flows through the loss. The rewards of the
reference-free losses are beta * a(y), as TRL logs them.
"""

from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from train.loss import IGNORE, pad_rows
from train.model.attention import softcap

LOSS_TYPES = ("sigmoid", "ipo", "simpo", "orpo")
REFERENCE_FREE = ("simpo", "orpo")  # no reference model is built or run for these


@dataclass
class DPOOutput:
    losses_B: torch.Tensor  # per pair; the training loss is usually its mean
    chosen_rewards_B: torch.Tensor  # beta * (policy - reference) log-prob of the chosen response, detached
    rejected_rewards_B: torch.Tensor


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, without cancellation on either side of -ln 2 (Maechler 2012)."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def smoothed_sigmoid_loss(logits_B: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing={label_smoothing}: it is the probability of a flipped label; use [0, 0.5)")
    return -(1 - label_smoothing) * F.logsigmoid(logits_B) - label_smoothing * F.logsigmoid(-logits_B)


def dpo_loss(
    policy_chosen_logps_B: torch.Tensor,
    policy_rejected_logps_B: torch.Tensor,
    ref_chosen_logps_B: Optional[torch.Tensor] = None,
    ref_rejected_logps_B: Optional[torch.Tensor] = None,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_tokens_B: Optional[torch.Tensor] = None,
    rejected_tokens_B: Optional[torch.Tensor] = None,
    simpo_gamma: float = 0.5,
) -> DPOOutput:
    """Per-pair DPO/cDPO/IPO/SimPO/ORPO losses from summed response log-probs. IPO, SimPO and ORPO need the
    response token counts; SimPO and ORPO take no reference log-probs."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r} is unknown; use one of: {', '.join(LOSS_TYPES)}")
    if loss_type != "sigmoid" and (chosen_tokens_B is None or rejected_tokens_B is None):
        raise ValueError(f"loss_type={loss_type!r} averages log-probs per token: pass chosen_tokens_B and rejected_tokens_B")
    if loss_type in ("ipo", "orpo") and label_smoothing:
        raise ValueError(f"label_smoothing={label_smoothing} has no meaning for loss_type={loss_type!r}; set it to 0")
    if loss_type in REFERENCE_FREE:
        chosen_B = policy_chosen_logps_B / chosen_tokens_B.clamp(min=1)
        rejected_B = policy_rejected_logps_B / rejected_tokens_B.clamp(min=1)
        if loss_type == "simpo":
            losses_B = smoothed_sigmoid_loss(beta * (chosen_B - rejected_B) - simpo_gamma, label_smoothing)
        else:
            log_odds_B = (chosen_B - rejected_B) - (log1mexp(chosen_B) - log1mexp(rejected_B))
            losses_B = -chosen_B - beta * F.logsigmoid(log_odds_B)
        return DPOOutput(losses_B, beta * chosen_B.detach(), beta * rejected_B.detach())
    chosen_logratios_B = policy_chosen_logps_B - ref_chosen_logps_B
    rejected_logratios_B = policy_rejected_logps_B - ref_rejected_logps_B
    if loss_type == "sigmoid":
        losses_B = smoothed_sigmoid_loss(beta * (chosen_logratios_B - rejected_logratios_B), label_smoothing)
    else:  # ipo
        h_B = chosen_logratios_B / chosen_tokens_B.clamp(min=1) - rejected_logratios_B / rejected_tokens_B.clamp(min=1)
        losses_B = (h_B - 1 / (2 * beta)) ** 2
    return DPOOutput(losses_B, beta * chosen_logratios_B.detach(), beta * rejected_logratios_B.detach())


def reward_metrics(chosen_rewards_B: torch.Tensor, rejected_rewards_B: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Batch means: accuracy (chosen reward above rejected), margin (chosen - rejected), and each reward."""
    return {
        "accuracy": (chosen_rewards_B > rejected_rewards_B).float().mean(),
        "margin": (chosen_rewards_B - rejected_rewards_B).mean(),
        "chosen": chosen_rewards_B.mean(),
        "rejected": rejected_rewards_B.mean(),
    }


def _target_logps(hidden_nD: torch.Tensor, weight_VD: Optional[torch.Tensor], targets_n: torch.Tensor,
                  final_softcap: Optional[float] = None) -> torch.Tensor:
    logits_nV = softcap((hidden_nD if weight_VD is None else hidden_nD @ weight_VD.T).float(), final_softcap)
    return logits_nV.gather(1, targets_n[:, None])[:, 0] - torch.logsumexp(logits_nV, dim=-1)


def sequence_logps(
    hidden_BTD: torch.Tensor, weight_VD: Optional[torch.Tensor], targets_BT: torch.Tensor, chunk_tokens: int = 1024,
    final_softcap: Optional[float] = None,
) -> torch.Tensor:
    """[B] fp32: sum over positions with targets != IGNORE of log softmax(hidden @ weight^T)[target]
    (logits soft-capped first with `final_softcap`, model.final_softcap).

    Pass the final hidden states and the output projection's weight [V, D], or logits [B, T, V] with
    weight_VD=None. Targets are aligned with positions (labels[:, 1:] for inputs ids[:, :-1]). Only the
    labelled positions are computed (the prompt costs nothing): `summed_logps` with each row one sequence.
    """
    valid_N = (targets_BT != IGNORE).flatten()
    rows_N = torch.arange(targets_BT.shape[0], device=targets_BT.device).repeat_interleave(targets_BT.shape[1])[valid_N]
    return summed_logps(hidden_BTD.flatten(0, 1)[valid_N], weight_VD, targets_BT.flatten()[valid_N], rows_N,
                        targets_BT.shape[0], chunk_tokens, final_softcap)


def summed_logps(
    hidden_ND: torch.Tensor, weight_VD: Optional[torch.Tensor], targets_N: torch.Tensor, sequences_N: torch.Tensor,
    sequences: int, chunk_tokens: int = 1024, final_softcap: Optional[float] = None,
) -> torch.Tensor:
    """[sequences] fp32: the log-probs of N labelled positions' targets, summed by their sequence (`sequences_N`,
    in 0..sequences-1; a packed batch holds several in a row). In chunks whose logits [chunk, V] are recomputed
    in backward rather than stored, so memory holds one chunk's logits at a time. N is padded to a multiple of
    ROWS_MULTIPLE (train/loss.py) with zero rows summed into a slot of their own, dropped."""
    hidden_ND, targets_N, sequences_N = pad_rows(hidden_ND, 0), pad_rows(targets_N, 0), pad_rows(sequences_N, sequences)
    logps_S = torch.zeros(sequences + 1, dtype=torch.float32, device=hidden_ND.device)
    needs_grad = torch.is_grad_enabled() and (hidden_ND.requires_grad or (weight_VD is not None and weight_VD.requires_grad))
    for start in range(0, len(targets_N), chunk_tokens):
        piece = slice(start, start + chunk_tokens)
        if needs_grad:
            logps_n = checkpoint(_target_logps, hidden_ND[piece], weight_VD, targets_N[piece], final_softcap,
                                 use_reentrant=False)
        else:
            logps_n = _target_logps(hidden_ND[piece], weight_VD, targets_N[piece], final_softcap)
        logps_S = logps_S.index_add(0, sequences_N[piece], logps_n)
    return logps_S[:sequences]
