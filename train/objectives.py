"""What a stage optimises, given a batch: next-token prediction (pre-training, mid-training, SFT) or
preference optimisation (DPO, IPO, SimPO, ORPO). The Trainer's loop is the same for all of them.

Each objective returns sums, never means; the batch's "count" (from its collate function,
train/data_loader.py) says what they are sums over (target tokens, or pairs), so the trainer can divide
by the global count across micro-batches and ranks and get the loss of the whole global batch, whatever
the number of ranks.
"""

from typing import Dict, Optional

import torch

from train.config import DPOConfig
from train.dpo_loss import REFERENCE_FREE, dpo_loss, sequence_logps, summed_logps
from train.loss import IGNORE, cross_entropy_sum, pad_rows
from train.mtp_loss import mtp_loss


class NextToken:
    """Cross-entropy on the target tokens (IGNORE: prompts, padding), fused with the output projection. A model
    with multi-token prediction modules (model.mtp) adds their loss to the auxiliary one (a mean per
    micro-batch, as the MoE losses) and reports it as `mtp_loss`; the loss itself stays the next-token one."""

    def __init__(self, chunk_tokens: int):
        self.chunk_tokens = chunk_tokens

    def __call__(self, model, batch) -> tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        hidden_BTD = model.hidden_states(batch["inputs"], batch.get("doc_ids"))
        loss = self.head_loss(model, hidden_BTD, batch["targets"], batch.get("target_positions"))
        if model.config.mtp.depth == 0:
            return loss, model.aux_loss(), {}
        weighted, summed = mtp_loss(model, hidden_BTD, batch, self.chunk_tokens)
        return loss, model.aux_loss() + weighted, {"mtp_loss": summed}

    def head_loss(self, model, hidden_BTD, targets_BT, target_positions=None) -> torch.Tensor:
        """The summed cross-entropy of the next-token predictions from final hidden states (also the last
        pipeline stage's loss, train/parallel/pipeline.py)."""
        hidden_ND, targets_N = hidden_BTD.flatten(0, 1), targets_BT.reshape(-1)
        if target_positions is not None:  # SFT: only the positions with a target reach the output projection
            hidden_ND, targets_N = pad_rows(hidden_ND.index_select(0, target_positions), 0), pad_rows(targets_N[target_positions], IGNORE)
        return cross_entropy_sum(hidden_ND, model.output_weight(), targets_N, self.chunk_tokens, model.config.final_softcap)


def response_logps(model, batch, chunk_tokens: int) -> torch.Tensor:
    """[2B] fp32: each sequence's summed log-prob of its response tokens (the targets that are not IGNORE).
    A packed batch (train/data_loader.py: collate_preferences) names its labelled positions and their sequences."""
    hidden_BTD = model.hidden_states(batch["inputs"], batch.get("doc_ids"))
    if "target_sequences" not in batch:
        return sequence_logps(hidden_BTD, model.output_weight(), batch["targets"], chunk_tokens, model.config.final_softcap)
    positions_N = batch["target_positions"]
    return summed_logps(hidden_BTD.flatten(0, 1).index_select(0, positions_N), model.output_weight(), batch["targets"].flatten()[positions_N],
                        batch["target_sequences"], 2 * batch["count"], chunk_tokens, model.config.final_softcap)


def response_tokens(batch) -> torch.Tensor:
    """[2B]: each sequence's number of response tokens."""
    if "target_sequences" not in batch:
        return (batch["targets"] != IGNORE).sum(dim=1)
    sequences_N = batch["target_sequences"]
    return torch.zeros(2 * batch["count"], dtype=torch.long, device=sequences_N.device).index_add(
        0, sequences_N, torch.ones_like(sequences_N))


class DirectPreference:
    """DPO and its reference-free relatives (SimPO, ORPO): chosen and rejected run as one batch (padded [2B, L],
    or packed into rows of seq_len), their log-probs a [2B] vector. The reference's log-probs come from the
    frozen reference model, run here on the same batch, or with the batch itself ("reference_2B", computed
    before training: train/reference.py)."""

    def __init__(self, config: DPOConfig, reference: Optional[torch.nn.Module], chunk_tokens: int):
        self.config, self.reference, self.chunk_tokens = config, reference, chunk_tokens

    def reference_logps(self, batch) -> Optional[torch.Tensor]:
        if self.config.loss_type in REFERENCE_FREE:
            return None
        if "reference_2B" in batch:
            return batch["reference_2B"]
        with torch.no_grad():
            return response_logps(self.reference, batch, self.chunk_tokens)

    def __call__(self, model, batch) -> tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        policy_2B = response_logps(model, batch, self.chunk_tokens)
        reference_2B = self.reference_logps(batch)
        tokens_2B = response_tokens(batch)
        B = policy_2B.shape[0] // 2
        ref_chosen_B, ref_rejected_B = (None, None) if reference_2B is None else (reference_2B[:B], reference_2B[B:])
        out = dpo_loss(policy_2B[:B], policy_2B[B:], ref_chosen_B, ref_rejected_B, self.config.beta,
                       self.config.loss_type, self.config.label_smoothing, tokens_2B[:B], tokens_2B[B:],
                       self.config.simpo_gamma)
        stats = {  # sums over pairs; the trainer divides by the global number of pairs
            "reward_accuracy": (out.chosen_rewards_B > out.rejected_rewards_B).float().sum(),
            "reward_margin": (out.chosen_rewards_B - out.rejected_rewards_B).sum(),
            "reward_chosen": out.chosen_rewards_B.sum(),
            "reward_rejected": out.rejected_rewards_B.sum(),
        }
        return out.losses_B.sum(), model.aux_loss(), stats
