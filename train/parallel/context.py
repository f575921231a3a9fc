"""Context parallelism: every window of T tokens is split over the `cp` ranks of a context group, so each
rank runs T / cp of its tokens through the whole model (activations, and attention's T x T work, shrink
by cp). It is the all-gather-KV form of Llama 3's training (arXiv 2407.21783 sec. 3.3.2): each softmax
attention layer gathers the keys and values of the whole window from its group (`ZigZagSplit.gather`,
whose backward sums their gradients back onto the ranks that made them) and attends from its own
queries under a mask of window positions, so document masks and sliding windows work unchanged.

Causal load balance (zig-zag): the window is cut into 2 x cp chunks and rank r holds chunks r and
2cp-1-r, so every rank has as many early (cheap) as late (expensive) queries.

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
Not (yet): the linear mixers (their chunk states would be passed from rank to rank), ring attention
(keys and values in flight instead of gathered), FlexAttention under CP (the dense path runs), and MoE
balancing losses over the whole window (each rank's router sees its own tokens).
"""

import torch
import torch.distributed as dist
from torch.distributed._functional_collectives import all_gather_single

from train.model.config import ModelConfig

CP_MIXERS = ("softmax_attention", "mla")
SHARDED_KEYS = ("inputs", "targets", "doc_ids")  # [B, T] tensors of a batch, cut along T


def context_parallel_problems(model: ModelConfig, cp: int) -> list[str]:
    """Why `model` cannot split its windows over `cp` ranks (one line each); [] if it can."""
    names = sorted(set(model.layer_mixers))
    problems = [f"model.mixers.{name}: kind {model.mixers[name].kind} is not supported with parallel.cp={cp} "
                f"(supported: {', '.join(CP_MIXERS)})" for name in names if model.mixers[name].kind not in CP_MIXERS]
    if model.shortcut_moe is not None:
        problems.append(f"model.shortcut_moe is not supported with parallel.cp={cp}")
    return problems


class ZigZagSplit:
    """A window split over the ranks of `group` in 2 x cp chunks, rank r holding chunks r and 2cp-1-r."""

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
