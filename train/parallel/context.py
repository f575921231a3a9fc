"""Context parallelism: every window of T tokens is split over the `cp` ranks of a context group, so each
rank runs T / cp of its tokens through the whole model (activations, and attention's T x T work, shrink
by cp). It is the all-gather-KV form of Llama 3's training (arXiv 2407.21783 sec. 3.3.2): each softmax
attention layer gathers the keys and values of the whole window from its group (`ZigZagSplit.gather`,
whose backward sums their gradients back onto the ranks that made them) and attends from its own
queries under a mask of window positions, so document masks and sliding windows work unchanged.

Causal load balance (zig-zag): the window is cut into 2 x cp chunks and rank r holds chunks r and
2cp-1-r, so every rank has as many early (cheap) as late (expensive) queries.

The linear mixers (Gated DeltaNet, Mamba2, kernel linear attention: recurrent scans over the window) keep
the zig-zag chunks. Their projections, norms and gates run on the rank's own tokens; the short causal
convolution of each chunk reads the kernel-1 window tokens before it from the rank that holds them
(`ZigZagSplit.previous`, an all-gather of every chunk's last tokens); the scan itself runs over the whole
window in window order on H / cp of the heads: an all-to-all gives each rank every token of its heads
(`to_heads`), another brings the outputs back to the ranks of their tokens (`to_tokens`). This is the
all-to-all form of Megatron-LM's Mamba context parallelism (megatron/core/ssm/mamba_context_parallel.py),
here around the scan only, so no parameter is sliced: the scan's inputs are per-head activations. It is
exact (each head's scan is the one-device scan, over the same chunks) and costs no extra compute; the
alternative that passes states between ranks (flash-linear-attention's fla/ops/cp: each rank scans its
chunk from a zero state, all-gathers the final states and the chunk transitions, folds them into its
initial state and scans again) needs no head split, but computes the delta rule's K x K transitions and a
second scan, and zig-zag chunks would each need their own fold. Document resets and the convolution's
document mask use the whole window's documents, so packed documents are exact too.

How it is applied, from outside the model:
- `parallelize` (train/parallel/fsdp.py) sets `model.sequence_split` to a `ZigZagSplit` (the protocol in
  train/model/documents.py): the model then builds its per-forward `Documents` with the split, so rotary
  positions and document ids are the window's (positions restart at each document start of the whole
  window, whichever rank holds it), and `attend` (train/model/attention.py) gathers keys and values;
- `ShardedSequences` wraps the stage's objective: inputs, targets and doc_ids of every batch are cut to
  the rank's zig-zag chunks at the loader -> model boundary (host counts stay the whole samples'; the
  trainer divides them by the ranks that read each sample);
- FSDP shards over (dp_shard, cp) (train/parallel/dims.py), which sums the gradients of the cp ranks'
  tokens.
Not (yet): ring attention (keys and values in flight instead of gathered), FlexAttention and the linear
mixers' CUDA kernels under CP (the dense / PyTorch paths run), and MoE balancing losses over the whole
window (each rank's router sees its own tokens).
"""

import torch
import torch.distributed as dist
from torch.distributed._functional_collectives import all_gather_single, all_to_all_single_autograd

from train.model.config import MixerConfig, ModelConfig

CP_MIXERS = ("softmax_attention", "mla", "linear_attention", "gated_deltanet", "mamba2", "parallel_hybrid")
SHARDED_KEYS = ("inputs", "targets", "doc_ids")  # [B, T] tensors of a batch, cut along T


def scan_heads(mixer: MixerConfig) -> tuple[str, int] | None:
    """(key, number) of the heads a linear mixer's scan splits over the cp ranks; None for attention."""
    if mixer.kind == "linear_attention":
        return "linear_attention.num_heads", mixer.linear_attention.num_heads
    if mixer.kind == "gated_deltanet":  # the scan runs on the value heads (keys repeated to them)
        return "gated_deltanet.num_value_heads", mixer.gated_deltanet.num_value_heads
    if mixer.kind == "mamba2":
        return "mamba2.num_heads", mixer.mamba2.num_heads
    if mixer.kind == "parallel_hybrid":
        return "parallel_hybrid.mamba2.num_heads", mixer.parallel_hybrid.mamba2.num_heads
    return None


def context_parallel_problems(model: ModelConfig, cp: int) -> list[str]:
    """Why `model` cannot split its windows over `cp` ranks (one line each); [] if it can."""
    problems = []
    for name in sorted(set(model.layer_mixers)):
        mixer = model.mixers[name]
        if mixer.kind not in CP_MIXERS:
            problems.append(f"model.mixers.{name}: kind {mixer.kind} is not supported with parallel.cp={cp} "
                            f"(supported: {', '.join(CP_MIXERS)})")
        elif (heads := scan_heads(mixer)) is not None and heads[1] % cp:
            problems.append(f"model.mixers.{name}.{heads[0]}={heads[1]} is not divisible by parallel.cp={cp} "
                            "(each cp rank scans the whole window for a share of the heads)")
    if model.shortcut_moe is not None:
        problems.append(f"model.shortcut_moe is not supported with parallel.cp={cp}")
    return problems


class ZigZagSplit:
    """A window split over the ranks of `group` in 2 x cp chunks, rank r holding chunks r and 2cp-1-r
    (the protocol of train/model/documents.py)."""

    pieces = 2  # a rank's tokens are two runs of consecutive window tokens: its two chunks

    def __init__(self, group: dist.ProcessGroup):
        self.group, self.size, self.rank = group, dist.get_world_size(group), dist.get_rank(group)

    def chunks(self, rank: int) -> tuple[int, int]:
        return rank, 2 * self.size - 1 - rank

    def window_index(self, rank: int, T: int, device) -> torch.Tensor:
        """[T] window positions of the T tokens rank `rank` holds (T = window / cp)."""
        half = T // 2
        return torch.cat([torch.arange(c * half, (c + 1) * half, device=device) for c in self.chunks(rank)])

    def query_index(self, T: int, device) -> torch.Tensor:
        return self.window_index(self.rank, T, device)

    def key_index(self, T: int, device) -> torch.Tensor:
        """[cp * T]: window positions in `gather`'s order (rank after rank)."""
        return torch.cat([self.window_index(r, T, device) for r in range(self.size)])

    def gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """All ranks' x concatenated along `dim`, rank after rank; the backward sums the gradients back."""
        gathered = all_gather_single(x.movedim(dim, 0).contiguous(), 0, self.group)
        return gathered.movedim(0, dim)

    def previous(self, x_BT_: torch.Tensor, n: int) -> torch.Tensor:
        """[B, 2, n, ...]: the n window tokens before each of this rank's chunks (zeros before chunk 0), from
        an all-gather of every chunk's last n tokens; the backward sums their gradients back."""
        half = x_BT_.shape[1] // 2
        if n > half:
            raise ValueError(f"a chunk of {half} tokens is shorter than the {n} tokens a convolution reads before "
                             f"it; use a data.seq_len of at least {2 * self.size * n} for parallel.cp={self.size}")
        ends_B2n_ = x_BT_.unflatten(1, (2, half))[:, :, half - n :]
        gathered_BCn_ = self.gather(ends_B2n_, 1)  # [B, 2 x cp, n, ...]: rank r's chunks at 2r and 2r + 1
        slots = {c: 2 * r + i for r in range(self.size) for i, c in enumerate(self.chunks(r))}
        ends_BCn_ = gathered_BCn_[:, [slots[c] for c in range(2 * self.size)]]  # in chunk order
        before_BCn_ = torch.cat([torch.zeros_like(ends_BCn_[:, :1]), ends_BCn_[:, :-1]], dim=1)
        return before_BCn_[:, list(self.chunks(self.rank))]

    def to_heads(self, x_BHT_: torch.Tensor) -> torch.Tensor:
        """This rank's tokens of all H heads [B, H, T, ...] -> all window tokens of its H / cp heads
        [B, H / cp, cp x T, ...], in window order (an all-to-all; the backward is the reverse one)."""
        H, T = x_BHT_.shape[1:3]
        if H % self.size:
            raise ValueError(f"{H} heads cannot be split over parallel.cp={self.size} ranks")
        send_CBhT_ = x_BHT_.unflatten(1, (self.size, H // self.size)).movedim(1, 0).contiguous()  # block j -> rank j
        received_CBhT_ = all_to_all_single_autograd(send_CBhT_, None, None, self.group)  # block j from rank j
        keys_BhL_ = received_CBhT_.movedim(0, 2).flatten(2, 3)  # in key order (rank after rank)
        return keys_BhL_.index_select(2, self.key_index(T, x_BHT_.device).argsort())

    def to_tokens(self, y_BhL_: torch.Tensor) -> torch.Tensor:
        """The inverse of `to_heads`: all window tokens of this rank's heads -> its own tokens of all heads."""
        T = y_BhL_.shape[2] // self.size
        keys_BhL_ = y_BhL_.index_select(2, self.key_index(T, y_BhL_.device))
        send_CBhT_ = keys_BhL_.unflatten(2, (self.size, T)).movedim(2, 0).contiguous()  # rank j's tokens -> rank j
        received_CBhT_ = all_to_all_single_autograd(send_CBhT_, None, None, self.group)  # heads block j from rank j
        return received_CBhT_.movedim(0, 1).flatten(1, 2)

    def shard(self, x_BT: torch.Tensor) -> torch.Tensor:
        """This rank's tokens [B, window / cp] of whole windows [B, window]."""
        T = x_BT.shape[1]
        if T % (2 * self.size):
            raise ValueError(f"a batch of {T} tokens per row cannot be cut into 2 x parallel.cp={self.size} chunks; "
                             f"use a data.seq_len that is a multiple of {2 * self.size}")
        return x_BT[:, self.window_index(self.rank, T // self.size, x_BT.device)]


class ShardedSequences:
    """The stage's objective on this rank's zig-zag chunks of every batch."""

    def __init__(self, objective, split: ZigZagSplit):
        self.objective, self.split = objective, split

    def __call__(self, model, batch):
        local = {k: self.split.shard(v) if k in SHARDED_KEYS else v for k, v in batch.items()}
        return self.objective(model, local)
