"""The resumable training data stream over prepared shards.

The state is global: the number of samples (windows) consumed. Optimizer step s reads global sample
indices [s * G, (s + 1) * G) for a global batch of G sequences; data-parallel rank r of W takes the
r-th contiguous slice of G / W of them, in micro-batches. Since a sample index alone says which
window it is (data/reader.py), a run resumed on any number of ranks continues with the next unseen
sample: nothing is seen twice, nothing skipped.
"""

from dataclasses import dataclass
from typing import Dict, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from data.reader import TokenWindows
from train.config import DataConfig


class WindowDataset(Dataset):
    def __init__(self, windows: TokenWindows):
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        window = self.windows[index]
        return {
            "tokens": torch.from_numpy(window.tokens),
            "doc_ids": torch.from_numpy(window.doc_ids),
            "index": torch.tensor(window.index),
        }


class GlobalBatchSampler(Sampler):
    """This rank's sample indices, step after step, starting after `consumed` global samples."""

    def __init__(self, consumed: int, global_batch: int, rank: int, ranks: int):
        self.consumed, self.global_batch, self.rank, self.per_rank = consumed, global_batch, rank, global_batch // ranks

    def __iter__(self) -> Iterator[int]:
        start = self.consumed
        while True:
            first = start + self.rank * self.per_rank
            yield from range(first, first + self.per_rank)
            start += self.global_batch


@dataclass
class Batch:
    inputs_BT: torch.Tensor
    targets_BT: torch.Tensor
    doc_ids_BT: torch.Tensor | None
    indices_B: torch.Tensor  # global sample indices, for accounting and tests


def to_batch(raw: Dict[str, torch.Tensor], device: torch.device, document_masking: bool) -> Batch:
    tokens = raw["tokens"].to(device, non_blocking=True)
    doc_ids = raw["doc_ids"][:, :-1].to(device, non_blocking=True) if document_masking else None
    return Batch(tokens[:, :-1], tokens[:, 1:], doc_ids, raw["index"])


def check_batch_sizes(global_batch: int, micro_batch: int, ranks: int) -> int:
    """Gradient-accumulation steps for this world size; the global batch is fixed across resumes."""
    if global_batch % (micro_batch * ranks):
        raise ValueError(
            f"trainer.global_batch_size={global_batch} is not a multiple of trainer.micro_batch_size={micro_batch} "
            f"x {ranks} data-parallel ranks; change one of them"
        )
    return global_batch // (micro_batch * ranks)


def train_loader(config: DataConfig, consumed: int, global_batch: int, micro_batch: int, rank: int, ranks: int) -> DataLoader:
    windows = TokenWindows(config.path, "train", config.seq_len, seed=config.seed, shuffle=True)
    sampler = GlobalBatchSampler(consumed, global_batch, rank, ranks)
    return DataLoader(WindowDataset(windows), batch_size=micro_batch, sampler=sampler, num_workers=config.num_workers,
                      persistent_workers=config.num_workers > 0)


def validation_batches(config: DataConfig, micro_batch: int, samples: int, rank: int, ranks: int):
    """The same held-out windows every time, whatever the number of ranks: the first `samples` windows
    of the validation split (unshuffled), dealt round-robin to the ranks, in micro-batches."""
    windows = TokenWindows(config.path, config.val_split, config.seq_len, shuffle=False)
    dataset = WindowDataset(windows)
    indices = [i % len(windows) for i in range(rank, samples, ranks)]
    for start in range(0, len(indices), micro_batch):
        items = [dataset[i] for i in indices[start : start + micro_batch]]
        yield {key: torch.stack([item[key] for item in items]) for key in items[0]}
