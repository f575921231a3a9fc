"""The multi-token prediction loss (DeepSeek-V3, arXiv 2412.19437 eq. 24-25): module k's cross-entropy
L_k over the positions whose token t_{i+k+1} exists, and L_MTP = lambda / D * sum_k L_k, added to the
next-token loss. Module k's row i predicts targets[:, i + k] (the next-token targets shifted by k; prompts
and padding stay IGNORE). The modules run on the final hidden states (train/model/mtp.py) and their
logits go through the shared output head, fused with the loss as the main one's (train/loss.py).
"""

import torch

from train.loss import IGNORE, cross_entropy_sum


def mtp_loss(model, hidden_BTD, batch, chunk_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(lambda / D * sum_k L_k with each L_k a mean over this micro-batch's targets, to add to the loss as an
    auxiliary mean; sum_k of the summed losses / D, a statistic the trainer divides by the next-token count)."""
    states = model.mtp_hidden_states(hidden_BTD, batch["inputs"], batch.get("doc_ids"))
    means, sums = [], []
    for k, state_BTD in enumerate(states, start=1):
        targets_N = batch["targets"][:, k:].reshape(-1)
        loss_sum = cross_entropy_sum(state_BTD.flatten(0, 1), model.output_weight(), targets_N, chunk_tokens,
                                     model.config.final_softcap)
        means.append(loss_sum / (targets_N != IGNORE).sum().clamp(min=1))
        sums.append(loss_sum)
    depth = len(states)
    return model.config.mtp.loss_weight / depth * torch.stack(means).sum(), torch.stack(sums).sum().detach() / depth
