"""What a stage optimises, given a batch: next-token prediction (pre-training, mid-training, SFT) or
direct preference optimisation (DPO). The Trainer's loop is the same for all of them.

Each objective returns sums, never means; the batch's "count" (from its collate function,
train/data_loader.py) says what they are sums over (target tokens, or pairs), so the trainer can divide
by the global count across micro-batches and ranks and get the loss of the whole global batch, whatever
the number of ranks.
"""

from typing import Dict

import torch

from train.config import DPOConfig
from train.dpo_loss import dpo_loss, sequence_logps
from train.loss import IGNORE, cross_entropy_sum
from train.mtp_loss import mtp_loss


class NextToken:
    """Cross-entropy on the target tokens (IGNORE: prompts, padding), fused with the output projection. A model
    with multi-token prediction modules (model.mtp) adds their loss to the auxiliary one (a mean per
    micro-batch, as the MoE losses) and reports it as `mtp_loss`; the loss itself stays the next-token one."""

    def __init__(self, chunk_tokens: int):
        self.chunk_tokens = chunk_tokens

    def __call__(self, model, batch) -> tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        hidden_BTD = model.hidden_states(batch["inputs"], batch.get("doc_ids"))
        loss = cross_entropy_sum(hidden_BTD.flatten(0, 1), model.output_weight(), batch["targets"].reshape(-1),
                                 self.chunk_tokens, model.config.final_softcap)
        if model.config.mtp.depth == 0:
            return loss, model.aux_loss(), {}
        weighted, summed = mtp_loss(model, hidden_BTD, batch, self.chunk_tokens)
        return loss, model.aux_loss() + weighted, {"mtp_loss": summed}


class DirectPreference:
    """DPO against a frozen reference model: chosen and rejected run as one [2B, L] batch."""

    def __init__(self, config: DPOConfig, reference: torch.nn.Module, chunk_tokens: int):
        self.config, self.reference, self.chunk_tokens = config, reference, chunk_tokens

    def logps(self, model, batch) -> torch.Tensor:
        hidden_BTD = model.hidden_states(batch["inputs"])
        return sequence_logps(hidden_BTD, model.output_weight(), batch["targets"], self.chunk_tokens,
                              model.config.final_softcap)

    def __call__(self, model, batch) -> tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        policy_2B = self.logps(model, batch)
        with torch.no_grad():
            reference_2B = self.logps(self.reference, batch)
        tokens_2B = (batch["targets"] != IGNORE).sum(dim=1)
        B = policy_2B.shape[0] // 2
        out = dpo_loss(policy_2B[:B], policy_2B[B:], reference_2B[:B], reference_2B[B:], self.config.beta,
                       self.config.loss_type, self.config.label_smoothing, tokens_2B[:B], tokens_2B[B:])
        stats = {  # sums over pairs; the trainer divides by the global number of pairs
            "reward_accuracy": (out.chosen_rewards_B > out.rejected_rewards_B).float().sum(),
            "reward_margin": (out.chosen_rewards_B - out.rejected_rewards_B).sum(),
            "reward_chosen": out.chosen_rewards_B.sum(),
            "reward_rejected": out.rejected_rewards_B.sum(),
        }
        return out.losses_B.sum(), model.aux_loss(), stats
