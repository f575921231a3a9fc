"""The resumable training data stream of every stage.

The state is global: the number of samples consumed. Optimizer step s reads global sample indices
[s * G, (s + 1) * G) for a global batch of G samples; data-parallel rank r of W takes the r-th
contiguous slice of G / W of them, in micro-batches. A sample index alone says which sample it is
(epoch index // n, then a seeded permutation: data.reader.EpochOrder), so a run resumed on any number
of ranks continues with the next unseen sample: nothing is seen twice, nothing skipped.

A sample is a window of prepared token shards (pre-training, mid-training), a window of packed
conversations with assistant-only labels (SFT), or a preference pair (DPO); each becomes a batch
dict {"inputs", "targets", "doc_ids"?} of tensors plus two host values: "index" (the global sample
indices, a list) and "count" (what the loss sums over: target tokens, or pairs; an int counted in NumPy
before any tensor exists, so the trainer needs no device->host copy for it). Which one a stage reads is
train/stages.py's.

The per-rank stream is a torchdata.nodes graph: this rank's sample indices -> the samples (in
`data.num_workers` worker processes, in order) -> micro-batches -> collate -> pinned memory (CUDA)
-> prefetch. Its state is the DataStream's `samples_consumed`; the graph is rebuilt from it on resume.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
import torchdata.nodes as nodes
from torch.utils.data import Dataset

from data.chat.preferences import collate_pairs, pack_pairs
from data.chat.template import IGNORE
from data.reader import EpochOrder, TokenWindows


def rank_indices(consumed: int, global_batch: int, rank: int, ranks: int) -> Iterator[int]:
    """This rank's global sample indices, step after step, starting after `consumed` global samples."""
    per_rank, start = global_batch // ranks, consumed
    while True:
        first = start + rank * per_rank
        yield from range(first, first + per_rank)
        start += global_batch


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


def collate_windows(samples: List) -> Dict[str, object]:
    """Windows of seq_len + 1 tokens -> inputs tokens[:-1], targets labels[1:] (or tokens[1:]); the count
    is the number of target tokens that are not IGNORE."""
    items, indices = zip(*samples)
    tokens_np = np.stack([item["tokens"] for item in items])
    labels_np = np.stack([item["labels"] for item in items]) if "labels" in items[0] else tokens_np
    doc_ids = torch.from_numpy(np.stack([item["doc_ids"] for item in items]))
    tokens, labels = torch.from_numpy(tokens_np), torch.from_numpy(labels_np)
    return {"inputs": tokens[:, :-1], "targets": labels[:, 1:], "doc_ids": doc_ids[:, :-1],
            "index": list(indices), "count": int(np.count_nonzero(labels_np[:, 1:] != IGNORE))}


def collate_preferences(pad_id: int, multiple_of: int, max_length: int, packed: bool) -> Callable[[List], Dict[str, object]]:
    """Pairs -> one batch of their 2B sequences, the B chosen then the B rejected: padded, [2B, L] rows of one
    sequence each; or packed, [R, W] rows of several (data/chat/preferences.py's pack_pairs), with their
    "doc_ids" and, found on the host, "target_positions" (the flat indices of the targets that are not IGNORE)
    and "target_sequences" (each one's sequence, 0..2B-1), along which the log-probs are summed."""
    def collate(samples: List) -> Dict[str, object]:
        pairs, indices = zip(*samples)
        if packed:
            batch = pack_pairs(pairs, pad_id, max_length, multiple_of)
            target_positions = np.flatnonzero(batch.targets_RW.numpy().reshape(-1) != IGNORE)
            return {"inputs": batch.inputs_RW, "targets": batch.targets_RW, "doc_ids": batch.doc_ids_RW,
                    "target_positions": torch.from_numpy(target_positions),
                    "target_sequences": batch.sequences_RW.reshape(-1)[target_positions],
                    "index": list(indices), "count": len(pairs)}
        batch = collate_pairs(pairs, pad_id, multiple_of, max_length)
        ids = torch.cat([batch.chosen_ids_BL, batch.rejected_ids_BL])
        labels = torch.cat([batch.chosen_labels_BL, batch.rejected_labels_BL])
        return {"inputs": ids[:, :-1], "targets": labels[:, 1:], "index": list(indices), "count": len(pairs)}
    return collate


class SFTSamples(Dataset):
    """SFT windows (data/chat/sft.py, e.g. memory-mapped from the tokenized cache) as sample dicts."""

    def __init__(self, windows: Sequence):
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> Dict[str, np.ndarray]:
        window = self.windows[index]
        return {"tokens": window.tokens, "labels": window.labels, "doc_ids": window.doc_ids, "length": window.length}


def collate_sft(multiple_of: int, packed: bool, select_targets: bool = True) -> Callable[[List], Dict[str, object]]:
    """SFT windows as collate_windows makes them, cut after the batch's last token that is not padding, the
    length rounded up to a multiple of `multiple_of` (few distinct shapes, as for DPO). Unpacked windows
    hold one conversation each: they need no document ids, attention is causal only. "target_positions"
    (the flat indices of the targets that are not IGNORE, found on the host) lets the loss run the output
    projection on the assistant tokens only, not on prompts and padding (`select_targets`: off where a rank
    holds only part of the sequence, under context or tensor parallelism)."""
    def collate(samples: List) -> Dict[str, object]:
        batch = collate_windows(samples)
        used = max(item["length"] for item, _ in samples) - 1  # input positions that hold a token
        length = min(batch["inputs"].shape[1], -(-used // multiple_of) * multiple_of)
        cut = {key: value[:, :length].contiguous() if isinstance(value, torch.Tensor) else value
               for key, value in batch.items()}
        if not packed:
            del cut["doc_ids"]
        if select_targets:
            cut["target_positions"] = torch.from_numpy(np.flatnonzero(cut["targets"].numpy().reshape(-1) != IGNORE))
        return cut
    return collate


@dataclass
class StageData:
    train: Dataset  # global sample index -> (sample, index)
    val: Sequence  # held-out (sample, index) pairs, in order
    collate: Callable[[List], Dict[str, torch.Tensor]]
    report: str  # what was read and what was skipped, for the console


class DataStream:
    """The training batches of this rank, resumable: its state is the global number of samples consumed."""

    def __init__(self, data: StageData, global_batch: int, micro_batch: int, workers: int, rank: int, ranks: int,
                 device: torch.device, document_masking: bool, record: Optional[Path] = None):
        self.data, self.global_batch, self.micro_batch, self.workers = data, global_batch, micro_batch, workers
        self.rank, self.ranks, self.device, self.document_masking = rank, ranks, device, document_masking
        self.record = record  # trainer.record_samples: append each step's sample indices to this file
        self.samples_consumed = 0
        self.loader = None

    def state_dict(self) -> Dict[str, int]:
        return {"samples_consumed": self.samples_consumed}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.samples_consumed, self.loader = state["samples_consumed"], None

    def build(self) -> nodes.Loader:
        indices = nodes.IterableWrapper(rank_indices(self.samples_consumed, self.global_batch, self.rank, self.ranks))
        if self.workers:
            samples = nodes.ParallelMapper(indices, self.data.train.__getitem__, num_workers=self.workers,
                                           in_order=True, method="process")
        else:
            samples = nodes.Mapper(indices, self.data.train.__getitem__)
        batches = nodes.Mapper(nodes.Batcher(samples, self.micro_batch, drop_last=True), self.data.collate)
        if self.device.type == "cuda":
            batches = nodes.PinMemory(batches)
        return nodes.Loader(nodes.Prefetcher(batches, prefetch_factor=2))

    def next_step(self, accumulation: int, step: int) -> List[Dict[str, torch.Tensor]]:
        """The micro-batches of optimizer step `step`, on the device; counts them as consumed."""
        if self.loader is None:
            self.loader = iter(self.build())
        micro_batches = [to_device(next(self.loader), self.device, self.document_masking) for _ in range(accumulation)]
        self.samples_consumed += self.global_batch
        if self.record is not None:
            self.record.parent.mkdir(parents=True, exist_ok=True)
            with open(self.record, "a") as f:
                f.write(json.dumps({"step": step, "indices": [i for b in micro_batches for i in b["index"]]}) + "\n")
        return micro_batches


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


def to_device(batch: Dict[str, object], device: torch.device, document_masking: bool) -> Dict[str, object]:
    """The batch's tensors on the device (non-blocking from pinned memory); the host values stay."""
    moved = {key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
             for key, value in batch.items()}
    if not document_masking:
        moved.pop("doc_ids", None)
    return moved
