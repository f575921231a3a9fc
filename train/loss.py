"""Cross-entropy over a large vocabulary without materialising all logits at once.

The output projection and the loss are fused and run in chunks of tokens: for each chunk the logits
[n, V] are computed (upcast to fp32), reduced to the loss, and turned at once into that chunk's
gradients, since d(CE)/d(logits) = softmax - onehot is known in the forward pass (the "fused linear
cross-entropy" of Liger-Kernel, arXiv 2410.10989). Backward only scales the stored gradients, so
the matmul count equals the unfused version's while peak memory drops from N*V to chunk*V floats.

With final logit soft-capping (`model.final_softcap`, Gemma 2: c = cap * tanh(z / cap) of the raw logits
z) the loss reads the capped logits, and the chain rule multiplies the gradient by
dc/dz = 1 - tanh(z / cap)^2.

Loss parallelism (tensor parallelism, train/parallel/tensor.py): when the output weight is a DTensor
split by vocabulary rows over the tp ranks, each rank computes the logits of its V/tp columns for every
token, and the log-sum-exp over the whole vocabulary is assembled explicitly (`VocabShard`: an all-reduced
max, then an all-reduced sum of exponentials; the target's logit from the rank holding it). The hidden
states are the same on every tp rank; their gradient, a sum over the vocabulary shards, is all-reduced
once per call, and each rank keeps the gradient of its own weight rows.
"""

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from data.chat.template import IGNORE  # the label of a token that contributes no loss (padding, prompts)
from train.model.attention import softcap
from train.model.precision import autocast_dtype

# The output projection runs on a multiple of this many positions where only some reach it (SFT's and DPO's
# targets): their count changes every batch, and CPU kernels cache per shape (docs/notes.md, "Packing DPO batches")
ROWS_MULTIPLE = 64


def pad_rows(x_N: torch.Tensor, fill, multiple: int = ROWS_MULTIPLE) -> torch.Tensor:
    """x_N with rows of `fill` appended up to a multiple of `multiple` rows."""
    padding = -len(x_N) % multiple
    return torch.cat([x_N, x_N.new_full((padding, *x_N.shape[1:]), fill)]) if padding else x_N


@dataclass
class VocabShard:
    """Columns start .. start + size of the vocabulary, the rest on the other ranks of `group`."""

    start: int
    size: int
    group: dist.ProcessGroup

    @classmethod
    def of(cls, weight_VD: DTensor) -> "VocabShard":
        if weight_VD.device_mesh.ndim != 1:
            raise ValueError(f"the output weight must be split over one mesh dimension, got {weight_VD.placements}")
        shape, offset = compute_local_shape_and_global_offset(weight_VD.shape, weight_VD.device_mesh, weight_VD.placements)
        return cls(offset[0], shape[0], weight_VD.device_mesh.get_group())

    def log_softmax(self, logits_nv: torch.Tensor) -> torch.Tensor:
        """log softmax over the whole vocabulary of this shard's columns of the logits (fp32)."""
        max_n = logits_nv.max(dim=-1).values
        dist.all_reduce(max_n, dist.ReduceOp.MAX, group=self.group)
        sum_n = (logits_nv - max_n[:, None]).exp().sum(dim=-1)
        dist.all_reduce(sum_n, group=self.group)
        return logits_nv - (max_n + sum_n.log())[:, None]

    def target_log_probs(self, log_probs_nv: torch.Tensor, targets_n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the targets' log-probabilities [n], from whichever rank holds each; local indices, -1 off this shard)."""
        local_n = targets_n - self.start
        here_n = (local_n >= 0) & (local_n < self.size)
        local_n = torch.where(here_n, local_n, -1)
        picked_n = log_probs_nv.gather(1, local_n.clamp(min=0)[:, None])[:, 0] * here_n
        dist.all_reduce(picked_n, group=self.group)
        return picked_n, local_n


def operands(hidden_ND: torch.Tensor, weight_VD: torch.Tensor, chunk_tokens: int) -> tuple:
    """(hidden, weight in the compute dtype, the workspace): the [n, V] buffers every chunk of n tokens writes
    into, logits in the compute dtype (later the logits' gradient), logits and log-probabilities in fp32. One
    workspace per call: fresh [n, V] tensors per chunk would be new memory each time, which a CPU page-faults
    in (zeroed pages from the kernel) for longer than the arithmetic on them takes. The compute dtype is
    autocast's where it is on, else the inputs' common one."""
    dtype = autocast_dtype(hidden_ND) or torch.promote_types(hidden_ND.dtype, weight_VD.dtype)
    rows, vocab = min(chunk_tokens, hidden_ND.shape[0]), weight_VD.shape[0]
    buffers = (hidden_ND.new_empty(rows, vocab, dtype=dtype),
               *(hidden_ND.new_empty(rows, vocab, dtype=torch.float32) for _ in range(2)))
    return hidden_ND.to(dtype), weight_VD.to(dtype), buffers


def _chunk_log_probs(hidden_nD, weight_VD, targets_n, buffers: tuple, cap: float | None = None,
                     shard: VocabShard | None = None):
    """(log-probabilities [n, V] (this shard's columns) in fp32, the targets' columns (-1: not here), valid mask,
    loss sum, dc/dz [n, V] or None) of one chunk, written into `buffers`; hidden, weight and buffers from operands()."""
    low_nV, logits_nV, log_probs_nV = (buffer[: len(hidden_nD)] for buffer in buffers)
    logits_nV.copy_(torch.mm(hidden_nD, weight_VD.T, out=low_nV))
    capped_nV = softcap(logits_nV, cap)
    slope_nV = None if cap is None else 1.0 - (capped_nV / cap).square()
    valid_n = targets_n != IGNORE
    safe_n = targets_n.clamp(min=0)
    if shard is None:
        log_probs_nV = torch.log_softmax(capped_nV, dim=-1, out=log_probs_nV)
        picked_n, columns_n = log_probs_nV.gather(1, safe_n[:, None])[:, 0], safe_n
    else:
        log_probs_nV = shard.log_softmax(capped_nV)
        picked_n, columns_n = shard.target_log_probs(log_probs_nV, safe_n)
    loss = -(picked_n * valid_n).sum()
    return log_probs_nV, columns_n, valid_n, loss, slope_nV


class FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden_ND, weight_VD, targets_N, chunk_tokens: int, cap: float | None = None,
                shard: VocabShard | None = None):
        hidden_ND, weight_cVD, buffers = operands(hidden_ND, weight_VD, chunk_tokens)
        # ignored targets get no gradient: their rows zeroed in the [N, D] operands, not in each [n, V] chunk
        valid_N1 = (targets_N != IGNORE)[:, None]
        masked_ND = hidden_ND * valid_N1
        grad_hidden_ND = torch.empty_like(hidden_ND)
        grad_weight_VD = torch.zeros(weight_VD.shape, dtype=torch.float32, device=weight_VD.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden_ND.device)
        for start in range(0, hidden_ND.shape[0], chunk_tokens):
            piece = slice(start, start + chunk_tokens)
            log_probs_nV, columns_n, valid_n, loss, slope_nV = _chunk_log_probs(
                hidden_ND[piece], weight_cVD, targets_N[piece], buffers, cap, shard)
            total += loss
            grad_nV = log_probs_nV.exp_()  # softmax, in place: two passes over [n, V] in all, not four
            rows_n = torch.arange(len(columns_n), device=grad_nV.device)
            grad_nV[rows_n, columns_n.clamp(min=0)] -= (columns_n >= 0).to(grad_nV.dtype)  # - onehot (where held here)
            if slope_nV is not None:  # through the soft-cap: d(CE)/dz = (softmax - onehot) * (1 - tanh^2)
                grad_nV *= slope_nV
            grad_nV = buffers[0][: len(grad_nV)].copy_(grad_nV)  # in the compute dtype, over the chunk's logits
            grad_hidden_ND[piece] = grad_nV @ weight_cVD
            grad_weight_VD += grad_nV.T @ masked_ND[piece]
        grad_hidden_ND *= valid_N1
        if shard is not None:  # each vocabulary shard's part of the hidden states' gradient, summed
            dist.all_reduce(grad_hidden_ND, group=shard.group)
        ctx.save_for_backward(grad_hidden_ND, grad_weight_VD.to(weight_VD.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden_ND, grad_weight_VD = ctx.saved_tensors
        return (grad_hidden_ND * grad_total.to(grad_hidden_ND.dtype), grad_weight_VD * grad_total.to(grad_weight_VD.dtype),
                None, None, None, None)


def cross_entropy_sum(hidden_ND: torch.Tensor, weight_VD: torch.Tensor, targets_N: torch.Tensor, chunk_tokens: int,
                      final_softcap: float | None = None) -> torch.Tensor:
    """Sum over tokens (targets != IGNORE) of -log softmax(softcap(hidden @ weight^T))[target], in fp32
    (`final_softcap` None: no cap). A DTensor weight split by vocabulary rows (loss parallelism) needs the
    same hidden states and targets on every rank of its mesh; every rank gets the whole sum."""
    shard = None
    if isinstance(weight_VD, DTensor):
        shard, weight_VD = VocabShard.of(weight_VD), weight_VD.to_local()  # the local rows' gradient stays sharded
    if torch.is_grad_enabled() and (hidden_ND.requires_grad or weight_VD.requires_grad):
        return FusedLinearCrossEntropy.apply(hidden_ND, weight_VD, targets_N, chunk_tokens, final_softcap, shard)
    hidden_ND, weight_VD, buffers = operands(hidden_ND, weight_VD, chunk_tokens)
    total = torch.zeros((), dtype=torch.float32, device=hidden_ND.device)
    for start in range(0, hidden_ND.shape[0], chunk_tokens):
        piece = slice(start, start + chunk_tokens)
        total += _chunk_log_probs(hidden_ND[piece], weight_VD, targets_N[piece], buffers, final_softcap, shard)[3]
    return total
