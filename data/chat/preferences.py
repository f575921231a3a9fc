"""Preference pairs for DPO: rows -> pairs (data/chat/formats.py: explicit or implicit prompt, HH-RLHF) ->
tokens (data/chat/chat_format.py), cached (data/chat/cache.py), collated into batches: padded (`collate_pairs`,
one sequence per row) or packed (`pack_pairs`, the batch's sequences in rows of seq_len, no padding between them).

Skipped and counted: identical chosen and rejected, an empty response, no common prompt, a pair the chat
format refuses, a prompt that leaves no room for a response within `max_length` tokens (plus the row-level
reasons of SFT). Responses that do not fit are cut at the end. Labels are only on the response tokens.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from tokenizers import Tokenizer

from data.chat import stdlib
from data.chat.cache import cache_folder, load_or_build, source_stamp
from data.chat.chat_format import ChatFormat, as_chat_format
from data.chat.formats import PreferencePair, formats_of, parse_row
from data.chat.rows import ChatSource, Skipped, read_valid
from data.chat.sft import best_fit_decreasing
from data.chat.template import IGNORE
from data.chat.workers import encode_many
from data.errors import DataError
from data.split import split_held_out


def read_pairs(source: ChatSource, skipped: Skipped) -> Iterator[PreferencePair]:
    """The valid pairs of a source, in order; bad rows are counted into `skipped`."""
    formats = formats_of("dpo", source.format)
    if source.kind == "stdlib":
        return iter([PreferencePair(*pair) for pair in stdlib.preference_pairs()])
    return read_valid(source, skipped, lambda row, where: parse_row(row, where, formats))


# --- tokens -----------------------------------------------------------------------------------------


@dataclass
class EncodedPair:
    chosen_ids: List[int]  # prompt + chosen reply
    chosen_labels: List[int]  # IGNORE on the prompt, the token on the reply
    rejected_ids: List[int]
    rejected_labels: List[int]
    where: str


def encode_sides(chat: ChatFormat, pair: PreferencePair) -> Tuple:
    """(chosen ids, chosen labels, rejected ids, rejected labels), uncut."""
    reply = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
    (chosen, chosen_labels), (rejected, rejected_labels) = chat.encode_pair(pair.prompt, reply(pair.chosen),
                                                                            reply(pair.rejected), pair.tools)
    return chosen, chosen_labels, rejected, rejected_labels


def fitted_pair(sides: Tuple, max_length: int, where: str, skipped: Skipped) -> Optional[EncodedPair]:
    """Both sides cut to `max_length` tokens; None (counted) when the prompt leaves no response token."""
    cut = [side[:max_length] for side in sides]
    if all(label == IGNORE for label in cut[1]) or all(label == IGNORE for label in cut[3]):
        skipped.add("prompt longer than max_length", where)
        return None
    return EncodedPair(*cut, where)


def encode_pair(tokenizer: Union[ChatFormat, Tokenizer], pair: PreferencePair, max_length: int, skipped: Skipped
                ) -> Optional[EncodedPair]:
    """One pair tokenized and cut to `max_length`; None (counted) when the prompt leaves no response token."""
    return fitted_pair(encode_sides(as_chat_format(tokenizer), pair), max_length, pair.where, skipped)


def encode_pairs(chat: ChatFormat, pairs: Sequence[PreferencePair], max_length: int, skipped: Skipped,
                 workers: int) -> List[EncodedPair]:
    encoded = []
    for pair, result in zip(pairs, encode_many(chat, encode_sides, pairs, workers)):
        if isinstance(result, str):
            skipped.add(result, pair.where)
        elif (fitted := fitted_pair(result, max_length, pair.where, skipped)) is not None:
            encoded.append(fitted)
    return encoded


@dataclass
class PreferenceBatch:
    chosen_ids_BL: torch.Tensor  # int64, PAD after each sequence
    chosen_labels_BL: torch.Tensor  # int64, IGNORE on prompts and padding; targets are labels[:, 1:]
    rejected_ids_BL: torch.Tensor
    rejected_labels_BL: torch.Tensor


def collate_pairs(pairs: Sequence[EncodedPair], pad_id: int, multiple_of: int = 1, max_length: int = 0) -> PreferenceBatch:
    """Right-padded to one length L for both sides, so chosen and rejected can run as one [2B, L] batch;
    L rounded up to a multiple of `multiple_of` (at most `max_length`, when given): few distinct shapes,
    since kernels cache per shape (docs/notes.md, "Padding DPO batches")."""
    longest = max(max(len(p.chosen_ids), len(p.rejected_ids)) for p in pairs)
    length = -(-longest // multiple_of) * multiple_of
    length = max(longest, min(length, max_length)) if max_length else length

    def padded(rows: List[List[int]], fill: int) -> torch.Tensor:
        return torch.tensor([row + [fill] * (length - len(row)) for row in rows], dtype=torch.long)

    return PreferenceBatch(
        padded([p.chosen_ids for p in pairs], pad_id), padded([p.chosen_labels for p in pairs], IGNORE),
        padded([p.rejected_ids for p in pairs], pad_id), padded([p.rejected_labels for p in pairs], IGNORE),
    )


@dataclass
class PackedPreferenceBatch:
    inputs_RW: torch.Tensor  # int64: each sequence's ids[:-1], back to back in R rows of W positions, PAD after
    targets_RW: torch.Tensor  # int64: its labels[1:] (IGNORE on prompts and padding), aligned with the inputs
    doc_ids_RW: torch.Tensor  # int64: each position's sequence inside its row from 0; padding gets the next id
    sequences_RW: torch.Tensor  # int64: each position's sequence in the batch (chosen 0..B-1, rejected B..2B-1); -1: padding


def pack_pairs(pairs: Sequence[EncodedPair], pad_id: int, seq_len: int, multiple_of: int = 1) -> PackedPreferenceBatch:
    """The batch's 2B sequences (the B chosen, then the B rejected), each shifted to its inputs and targets,
    placed into rows of seq_len positions by best-fit decreasing (data/chat/sft.py), none split; W is the
    fullest row rounded up to a multiple of `multiple_of` (at most seq_len), as collate_pairs rounds."""
    sequences = [(p.chosen_ids, p.chosen_labels) for p in pairs] + [(p.rejected_ids, p.rejected_labels) for p in pairs]
    bins = best_fit_decreasing([len(ids) - 1 for ids, _ in sequences], seq_len)
    fullest = max(sum(len(sequences[i][0]) - 1 for i in items) for items in bins)
    width = min(seq_len, -(-fullest // multiple_of) * multiple_of)
    inputs = np.full((len(bins), width), pad_id, dtype=np.int64)
    targets = np.full((len(bins), width), IGNORE, dtype=np.int64)
    doc_ids = np.empty((len(bins), width), dtype=np.int64)
    slots = np.full((len(bins), width), -1, dtype=np.int64)
    for row, items in enumerate(bins):
        start = 0
        for doc, item in enumerate(items):
            ids, labels = sequences[item]
            end = start + len(ids) - 1
            inputs[row, start:end], targets[row, start:end], doc_ids[row, start:end] = ids[:-1], labels[1:], doc
            slots[row, start:end] = item
            start = end
        doc_ids[row, start:] = len(items)
    return PackedPreferenceBatch(*(torch.from_numpy(a) for a in (inputs, targets, doc_ids, slots)))


class PairArrays(Sequence):
    """Encoded pairs as flat int32 arrays of ids and labels with the sequences' offsets (the cache's layout):
    sequence 2i is pair i's chosen side, 2i + 1 its rejected side."""

    def __init__(self, ids: np.ndarray, labels: np.ndarray, offsets: np.ndarray):
        self.ids, self.labels, self.offsets = ids, labels, offsets

    @classmethod
    def of(cls, pairs: Sequence[EncodedPair]) -> "PairArrays":
        ids = [side for p in pairs for side in (p.chosen_ids, p.rejected_ids)]
        labels = [side for p in pairs for side in (p.chosen_labels, p.rejected_labels)]
        offsets = np.concatenate([[0], np.cumsum([len(side) for side in ids], dtype=np.int64)])
        flat = lambda rows: np.fromiter((t for row in rows for t in row), dtype=np.int32, count=int(offsets[-1]))  # noqa: E731
        return cls(flat(ids), flat(labels), offsets)

    @classmethod
    def load(cls, folder: Path, part: str) -> "PairArrays":
        return cls(*(np.load(folder / f"{part}_{name}.npy", mmap_mode="r") for name in ("ids", "labels", "offsets")))

    def save(self, folder: Path, part: str) -> None:
        for name in ("ids", "labels", "offsets"):
            np.save(folder / f"{part}_{name}.npy", getattr(self, name))

    def __len__(self) -> int:
        return (len(self.offsets) - 1) // 2

    def __getitem__(self, index: int) -> EncodedPair:
        if not 0 <= index < len(self):  # an IndexError also ends iteration (list(), for loops)
            raise IndexError(f"pair {index} of {len(self)}")
        (a, b, c) = self.offsets[2 * index : 2 * index + 3]
        return EncodedPair(self.ids[a:b].tolist(), self.labels[a:b].tolist(), self.ids[b:c].tolist(),
                           self.labels[b:c].tolist(), f"pair {index}")


@dataclass
class PairData:
    train: Sequence[EncodedPair]
    val: Sequence[EncodedPair]
    skipped: Skipped
    pairs: int  # valid pairs read, before the split
    cache: Optional[Path] = None  # the tokenized cache folder, when one is used
    reused: bool = False  # the cache was there already: nothing was tokenized


def build_pairs(source: ChatSource, chat: ChatFormat, max_length: int, val_fraction: float, workers: int) -> PairData:
    skipped = Skipped()
    pairs = list(read_pairs(source, skipped))
    if not pairs:
        raise DataError(f"kind={source.kind} paths={list(source.paths)} name={source.name}: no usable preference pair"
                        f"{' (' + skipped.report() + ')' if skipped.counts else ''}; rows need chosen and rejected")
    train, val = (encode_pairs(chat, part, max_length, skipped, workers) for part in split_held_out(pairs, val_fraction))
    return PairData(train, val, skipped, len(pairs))


def load_pairs(source: ChatSource, tokenizer: Union[ChatFormat, Tokenizer], max_length: int, val_fraction: float = 0.05,
               cache: Optional[Path] = None, builder: bool = True, workers: int = 0, wait_s: float = 3600.0
               ) -> PairData:
    """The DPO entry point: train and held-out pairs, and what was skipped. The held-out rule is SFT's (by pair ordinal).
    With a `cache` root the pairs come from its tokenized cache, as for SFT (data/chat/sft.py's load_sft)."""
    chat = as_chat_format(tokenizer)
    if cache is None:
        return build_pairs(source, chat, max_length, val_fraction, workers)
    folder = cache_folder(cache, "dpo", {"source": source_stamp(source), "chat": chat.fingerprint,
                                         "max_length": max_length, "val_fraction": val_fraction})

    def build(tmp: Path) -> dict:
        data = build_pairs(source, chat, max_length, val_fraction, workers)
        PairArrays.of(data.train).save(tmp, "train")
        PairArrays.of(data.val).save(tmp, "val")
        return {"pairs": data.pairs, "train": len(data.train), "val": len(data.val), "skipped": data.skipped.counts,
                "examples": data.skipped.examples}

    meta, reused = load_or_build(folder, builder, build, wait_s)
    return PairData(PairArrays.load(folder, "train"), PairArrays.load(folder, "val"),
                    Skipped(meta["skipped"], meta["examples"]), meta["pairs"], folder, reused)
