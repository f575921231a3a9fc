"""How a global batch is split: over the data-parallel ranks, then into micro-batches on each rank.

The global batch (trainer.global_batch_size sequences per optimizer step) is fixed, whatever the number
of ranks, so a run resumes on another world size with the same optimisation. Each rank takes an equal
share; trainer.micro_batch_size is the most a rank runs per forward, and the micro-batch is the largest
size up to it that divides the share (the rest is gradient accumulation). Imports no torch.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchPlan:
    per_rank: int  # sequences each rank reads per optimizer step
    micro_batch: int  # sequences per forward
    accumulation: int  # forwards per optimizer step

    def describe(self) -> str:
        return f"{self.accumulation} micro-batch(es) of {self.micro_batch} per rank per step"


def batch_plan(global_batch: int, micro_batch_max: int, dp_ranks: int) -> BatchPlan:
    """The split of `global_batch` over `dp_ranks`, or ValueError naming both numbers and the nearest
    global batch sizes that divide."""
    if global_batch < 1 or micro_batch_max < 1:
        raise ValueError(f"trainer.global_batch_size={global_batch} and trainer.micro_batch_size={micro_batch_max} "
                         "must be at least 1")
    if global_batch % dp_ranks:
        below = global_batch - global_batch % dp_ranks
        above = below + dp_ranks
        nearest = " or ".join(str(n) for n in (below, above) if n > 0)
        raise ValueError(f"trainer.global_batch_size={global_batch} does not divide over {dp_ranks} data-parallel "
                         f"ranks; use a multiple of {dp_ranks}, e.g. trainer.global_batch_size={nearest}")
    per_rank = global_batch // dp_ranks
    micro = max(d for d in range(1, min(micro_batch_max, per_rank) + 1) if per_rank % d == 0)
    return BatchPlan(per_rank, micro, per_rank // micro)
