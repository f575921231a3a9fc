"""The resumable training data stream of every stage.

The state is global: the number of samples consumed. Optimizer step s reads global sample indices
[s * G, (s + 1) * G) for a global batch of G samples; data-parallel rank r of W takes the r-th
contiguous slice of G / W of them, in micro-batches. A sample index alone says which sample it is
(epoch index // n, then a seeded permutation: data.reader.EpochOrder), so a run resumed on any number
of ranks continues with the next unseen sample: nothing is seen twice, nothing skipped.

A sample is a window of prepared token shards (pre-training, mid-training), a window of packed
conversations with assistant-only labels (SFT), or a preference pair (DPO); each becomes a batch
dict {"inputs", "targets", "doc_ids"?, "index"} of tensors.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Sequence

import numpy as np
import torch
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, Dataset, Sampler

from data.conversations import load_sft
from data.preferences import collate_pairs, load_pairs
from data.reader import EpochOrder, TokenWindows
from train.config import DataConfig


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


class Indexed(Dataset):
    """A list of samples addressed by global sample index (epochs of seeded permutations)."""

    def __init__(self, items: Sequence, seed: int, shuffle: bool = True):
        self.items, self.order = items, EpochOrder(len(items), seed, shuffle)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[self.order(index)], index


class Windows(Dataset):
    """Token windows of prepared shards, as (window dict, index)."""

    def __init__(self, windows: TokenWindows):
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int):
        window = self.windows[index]
        return {"tokens": window.tokens, "doc_ids": window.doc_ids}, index


def collate_windows(samples: List) -> Dict[str, torch.Tensor]:
    """Windows of seq_len + 1 tokens -> inputs tokens[:-1], targets labels[1:] (or tokens[1:])."""
    items, indices = zip(*samples)
    tokens = torch.from_numpy(np.stack([item["tokens"] for item in items]))
    labels = torch.from_numpy(np.stack([item["labels"] for item in items])) if "labels" in items[0] else tokens
    doc_ids = torch.from_numpy(np.stack([item["doc_ids"] for item in items]))
    return {"inputs": tokens[:, :-1], "targets": labels[:, 1:], "doc_ids": doc_ids[:, :-1],
            "index": torch.tensor(indices)}


def collate_preferences(pad_id: int, multiple_of: int, max_length: int) -> Callable[[List], Dict[str, torch.Tensor]]:
    """Pairs -> one [2B, L] batch: the B chosen sequences, then the B rejected ones."""
    def collate(samples: List) -> Dict[str, torch.Tensor]:
        pairs, indices = zip(*samples)
        batch = collate_pairs(pairs, pad_id, multiple_of, max_length)
        ids = torch.cat([batch.chosen_ids_BL, batch.rejected_ids_BL])
        labels = torch.cat([batch.chosen_labels_BL, batch.rejected_labels_BL])
        return {"inputs": ids[:, :-1], "targets": labels[:, 1:], "index": torch.tensor(indices)}
    return collate


def sft_items(windows) -> List[Dict[str, np.ndarray]]:
    return [{"tokens": w.tokens, "labels": w.labels, "doc_ids": w.doc_ids} for w in windows]


@dataclass
class StageData:
    train: Dataset  # global sample index -> (sample, index)
    val: Sequence  # held-out (sample, index) pairs, in order
    collate: Callable[[List], Dict[str, torch.Tensor]]
    report: str  # what was read and what was skipped, for the console


def stage_data(stage: str, config: DataConfig, tokenizer_folder: Path) -> StageData:
    if stage in ("pretrain", "midtrain"):
        train = Windows(TokenWindows(config.path, "train", config.seq_len, seed=config.seed, shuffle=True))
        val = Windows(TokenWindows(config.path, config.val_split, config.seq_len, shuffle=False))
        return StageData(train, [val[i] for i in range(len(val))], collate_windows,
                         f"{len(train):,} windows of {config.seq_len} tokens from {config.path}")
    tokenizer = Tokenizer.from_file(str(tokenizer_folder / "tokenizer.json"))
    pad_id = tokenizer.token_to_id("<|pad|>") or 0
    if stage == "sft":
        sft = load_sft(config.chat, tokenizer, config.seq_len, pad_id, config.pack, config.chat_val_fraction)
        report = f"{sft.conversations:,} conversations in {len(sft.train):,} windows (+{len(sft.val)} held out)"
        train, val, collate, skipped = sft_items(sft.train), sft_items(sft.val), collate_windows, sft.skipped
    elif stage == "dpo":
        train, val, skipped = load_pairs(config.chat, tokenizer, config.seq_len, config.chat_val_fraction)
        report = f"{len(train):,} preference pairs (+{len(val)} held out)"
        collate = collate_preferences(pad_id, config.pad_to_multiple_of, config.seq_len)
    else:
        raise ValueError(f"stage={stage!r} is unknown; use pretrain, midtrain, sft or dpo")
    dropped = sum(n for reason, n in skipped.counts.items() if not reason.endswith("(kept)"))
    if skipped.counts:  # the counts by reason; "(kept)" ones (e.g. truncated) were used, not dropped
        report += f"; skipped {dropped}: {skipped.report()}"
    return StageData(Indexed(train, config.seed), [(item, i) for i, item in enumerate(val)], collate, report)


def check_batch_sizes(global_batch: int, micro_batch: int, ranks: int) -> int:
    """Gradient-accumulation steps for this world size; the global batch is fixed across resumes."""
    if global_batch % (micro_batch * ranks):
        raise ValueError(
            f"trainer.global_batch_size={global_batch} is not a multiple of trainer.micro_batch_size={micro_batch} "
            f"x {ranks} data-parallel ranks; change one of them"
        )
    return global_batch // (micro_batch * ranks)


def train_loader(data: StageData, workers: int, consumed: int, global_batch: int, micro_batch: int, rank: int,
                 ranks: int) -> DataLoader:
    sampler = GlobalBatchSampler(consumed, global_batch, rank, ranks)
    return DataLoader(data.train, batch_size=micro_batch, sampler=sampler, num_workers=workers,
                      collate_fn=data.collate, persistent_workers=workers > 0)


def validation_batches(data: StageData, micro_batch: int, samples: int, rank: int, ranks: int):
    """The same held-out samples every time, whatever the number of ranks: the first `samples`, dealt
    round-robin to the ranks, in micro-batches, as (batch, counts). Every rank runs the same number of
    forwards (sharded models gather their weights collectively): a rank that has run out repeats its
    last batch with counts=False, to be left out of the sums."""
    n = min(samples, len(data.val))
    mine = [data.val[i] for i in range(rank, n, ranks)]
    per_rank = -(-n // ranks)  # the most any rank holds
    for start in range(0, per_rank, micro_batch):
        chunk = mine[start : start + micro_batch]
        yield data.collate(chunk or mine[-micro_batch:] or data.val[:1]), bool(chunk)


def to_device(batch: Dict[str, torch.Tensor], device: torch.device, document_masking: bool) -> Dict[str, torch.Tensor]:
    moved = {key: value.to(device, non_blocking=True) for key, value in batch.items() if key != "index"}
    if not document_masking:
        moved.pop("doc_ids", None)
    moved["index"] = batch["index"]
    return moved
