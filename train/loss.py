"""Cross-entropy over a large vocabulary without materialising all logits at once.

The output projection and the loss are fused and run in chunks of tokens: for each chunk the logits
[n, V] are computed (upcast to fp32), reduced to the loss, and turned at once into that chunk's
gradients, since d(CE)/d(logits) = softmax - onehot is known in the forward pass (the "fused linear
cross-entropy" of Liger-Kernel, arXiv 2410.10989). Backward only scales the stored gradients, so
the matmul count equals the unfused version's while peak memory drops from N*V to chunk*V floats.

With final logit soft-capping (`model.final_softcap`, Gemma 2: c = cap * tanh(z / cap) of the raw logits
z) the loss reads the capped logits, and the chain rule multiplies the gradient by
dc/dz = 1 - tanh(z / cap)^2.
"""

import torch

from data.chat.template import IGNORE  # the label of a token that contributes no loss (padding, prompts)
from train.model.attention import softcap


def _chunk_log_probs(hidden_nD, weight_VD, targets_n, cap: float | None = None):
    """(log-probabilities [n, V] in fp32, safe targets, valid mask, loss sum, dc/dz [n, V] or None) of one chunk."""
    logits_nV = (hidden_nD @ weight_VD.T).float()
    capped_nV = softcap(logits_nV, cap)
    slope_nV = None if cap is None else 1.0 - (capped_nV / cap).square()
    log_probs_nV = torch.log_softmax(capped_nV, dim=-1)
    valid_n = targets_n != IGNORE
    safe_n = targets_n.clamp(min=0)
    loss = -(log_probs_nV.gather(1, safe_n[:, None])[:, 0] * valid_n).sum()
    return log_probs_nV, safe_n, valid_n, loss, slope_nV


class FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden_ND, weight_VD, targets_N, chunk_tokens: int, cap: float | None = None):
        grad_hidden_ND = torch.empty_like(hidden_ND)
        grad_weight_VD = torch.zeros(weight_VD.shape, dtype=torch.float32, device=weight_VD.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden_ND.device)
        for start in range(0, hidden_ND.shape[0], chunk_tokens):
            hidden_nD = hidden_ND[start : start + chunk_tokens]
            log_probs_nV, safe_n, valid_n, loss, slope_nV = _chunk_log_probs(
                hidden_nD, weight_VD, targets_N[start : start + chunk_tokens], cap)
            total += loss
            grad_nV = log_probs_nV.exp_()  # softmax, in place: two passes over [n, V] in all, not four
            grad_nV[torch.arange(len(safe_n), device=grad_nV.device), safe_n] -= 1.0
            grad_nV *= valid_n[:, None]  # ignored targets get no gradient (a multiply: no host sync to test for any)
            if slope_nV is not None:  # through the soft-cap: d(CE)/dz = (softmax - onehot) * (1 - tanh^2)
                grad_nV *= slope_nV
            grad_nV = grad_nV.to(hidden_ND.dtype)
            grad_hidden_ND[start : start + chunk_tokens] = grad_nV @ weight_VD
            grad_weight_VD += (grad_nV.T @ hidden_nD).float()
        ctx.save_for_backward(grad_hidden_ND, grad_weight_VD.to(weight_VD.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden_ND, grad_weight_VD = ctx.saved_tensors
        return grad_hidden_ND * grad_total.to(grad_hidden_ND.dtype), grad_weight_VD * grad_total.to(grad_weight_VD.dtype), None, None, None


def cross_entropy_sum(hidden_ND: torch.Tensor, weight_VD: torch.Tensor, targets_N: torch.Tensor, chunk_tokens: int,
                      final_softcap: float | None = None) -> torch.Tensor:
    """Sum over tokens (targets != IGNORE) of -log softmax(softcap(hidden @ weight^T))[target], in fp32
    (`final_softcap` None: no cap)."""
    if torch.is_grad_enabled() and (hidden_ND.requires_grad or weight_VD.requires_grad):
        return FusedLinearCrossEntropy.apply(hidden_ND, weight_VD, targets_N, chunk_tokens, final_softcap)
    total = torch.zeros((), dtype=torch.float32, device=hidden_ND.device)
    for start in range(0, hidden_ND.shape[0], chunk_tokens):
        piece = slice(start, start + chunk_tokens)
        total += _chunk_log_probs(hidden_ND[piece], weight_VD, targets_N[piece], final_softcap)[3]
    return total
