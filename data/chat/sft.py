"""SFT conversations: rows -> conversations (data/chat/formats.py) -> tokens (data/chat/chat_format.py) -> packed
training windows, cached (data/chat/cache.py).

Bad rows are skipped and counted by reason: malformed JSON, a row of no format, a malformed or empty
message, no assistant turn, a conversation the chat format refuses, and (once tokenized) a prompt longer
than the sequence length. A conversation longer than a window is truncated at its end and counted. The
embedded default (`kind: stdlib`) is data/chat/stdlib.py's questions.

Windows are `seq_len + 1` tokens like data/reader.py's: inputs tokens[:-1], targets labels[1:].
"""

import heapq
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Union

import numpy as np
from tokenizers import Tokenizer

from data.chat import stdlib
from data.chat.cache import cache_folder, load_or_build, source_stamp
from data.chat.chat_format import ChatFormat, as_chat_format
from data.chat.formats import Conversation, formats_of, parse_row
from data.chat.rows import ChatSource, Skipped, read_valid
from data.chat.template import IGNORE
from data.chat.workers import encode_many
from data.errors import DataError
from data.split import split_held_out


def read_conversations(source: ChatSource, skipped: Skipped) -> Iterator[Conversation]:
    """The valid conversations of a source, in order; bad rows are counted into `skipped`."""
    formats = formats_of("sft", source.format)
    if source.kind == "stdlib":
        return iter([Conversation(messages, where) for messages, where in stdlib.conversations()])
    return read_valid(source, skipped, lambda row, where: parse_row(row, where, formats))


# --- tokens -> windows ------------------------------------------------------------------------------


@dataclass
class Encoded:
    input_ids: List[int]
    labels: List[int]  # aligned with input_ids: the token itself where it is trained on, else IGNORE
    where: str


@dataclass
class SFTWindow:
    tokens: np.ndarray  # [seq_len + 1] int64: inputs tokens[:-1]
    labels: np.ndarray  # [seq_len + 1] int64: targets labels[1:], IGNORE where no loss (prompts, padding)
    doc_ids: np.ndarray  # [seq_len + 1] int32: each token's conversation inside the window from 0; padding gets the next id
    length: int  # tokens before the padding


def encode_one(chat: ChatFormat, conversation: Conversation) -> Encoded:
    if conversation.text is not None:
        ids = chat.encode_text(conversation.text)
        return Encoded(ids, list(ids), conversation.where)
    return Encoded(*chat.encode(conversation.messages, conversation.tools, conversation.train_from), conversation.where)


def encode_all(chat: Union[ChatFormat, Tokenizer], conversations: Sequence[Conversation],
               skipped: Optional[Skipped] = None, workers: int = 0) -> List[Encoded]:
    """The conversations tokenized (in `workers` processes for large sets); those the chat format refuses are
    counted into `skipped`."""
    encoded = []
    for conversation, result in zip(conversations, encode_many(as_chat_format(chat), encode_one, conversations, workers)):
        if isinstance(result, str):
            if skipped is None:
                raise DataError(f"{conversation.where}: {result}")
            skipped.add(result, conversation.where)
        else:
            encoded.append(result)
    return encoded


def fitted(examples: Sequence[Encoded], seq_len: int, skipped: Skipped) -> Iterator[Encoded]:
    """Examples cut to a window of seq_len + 1 tokens; a prompt (tokens before the first label) that leaves
    no target inside the window drops its example, a longer conversation is cut at the end."""
    for example in examples:
        labelled = [i for i, label in enumerate(example.labels) if label != IGNORE]
        if not labelled or labelled[0] > seq_len:
            skipped.add("prompt longer than seq_len", example.where)
            continue
        if len(example.input_ids) > seq_len + 1:
            skipped.add("truncated to seq_len (kept)", example.where)
        yield Encoded(example.input_ids[: seq_len + 1], example.labels[: seq_len + 1], example.where)


def window(pieces: List[Encoded], seq_len: int, pad_id: int) -> SFTWindow:
    tokens = np.full(seq_len + 1, pad_id, dtype=np.int64)
    labels = np.full(seq_len + 1, IGNORE, dtype=np.int64)
    doc_ids = np.full(seq_len + 1, len(pieces), dtype=np.int32)
    start = 0
    for doc, piece in enumerate(pieces):
        end = start + len(piece.input_ids)
        tokens[start:end], labels[start:end], doc_ids[start:end] = piece.input_ids, piece.labels, doc
        start = end
    return SFTWindow(tokens, labels, doc_ids, start)


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> List[List[int]]:
    """Bins of item indices, none holding more than `capacity`: the longest item first, each into the open bin
    it leaves the least room in (the first such bin on a tie), else into a new bin. Deterministic (equal
    lengths in input order); at most 11/9 of the fewest bins possible + 1, in practice a few percent more
    (Johnson 1973)."""
    bins: List[List[int]] = []
    by_room: List[List[int]] = [[] for _ in range(capacity + 1)]  # room left -> a heap of the bins with that room
    has_room = np.zeros(capacity + 1, dtype=bool)  # by_room[r] is not empty
    for item in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        length = lengths[item]
        room = length + int(np.argmax(has_room[length:]))  # the least room >= length (argmax: the first True)
        if has_room[room]:
            target = heapq.heappop(by_room[room])
            has_room[room] = bool(by_room[room])
        else:
            target, room = len(bins), capacity
            bins.append([])
        bins[target].append(item)
        if room > length:
            heapq.heappush(by_room[room - length], target)
            has_room[room - length] = True
    return bins


def pack_sft(examples: Sequence[Encoded], seq_len: int, pad_id: int, skipped: Skipped) -> List[SFTWindow]:
    """Best-fit decreasing: conversations, longest first, each into the window it fills best; the rest of a
    window is padding (PAD, IGNORE). No conversation is split across windows. (Greedy packing in order left
    23% of Alpaca's windows empty at seq_len 256, this 0.7%.)"""
    kept = list(fitted(examples, seq_len, skipped))
    bins = best_fit_decreasing([len(example.input_ids) for example in kept], seq_len + 1)
    return [window([kept[i] for i in items], seq_len, pad_id) for items in bins]


def pad_sft(examples: Sequence[Encoded], seq_len: int, pad_id: int, skipped: Skipped) -> List[SFTWindow]:
    """One conversation per window, PAD and IGNORE after it."""
    return [window([example], seq_len, pad_id) for example in fitted(examples, seq_len, skipped)]


class SFTWindows(Sequence):
    """Windows as three [N, seq_len + 1] int32 arrays and their [N] lengths (memory-mapped from the cache),
    read as SFTWindows."""

    ARRAYS = ("tokens", "labels", "doc_ids", "lengths")

    def __init__(self, tokens: np.ndarray, labels: np.ndarray, doc_ids: np.ndarray, lengths: np.ndarray):
        self.tokens, self.labels, self.doc_ids, self.lengths = tokens, labels, doc_ids, lengths

    @classmethod
    def of(cls, windows: List[SFTWindow], seq_len: int) -> "SFTWindows":
        def stack(name: str) -> np.ndarray:
            rows = [getattr(w, name) for w in windows]
            return np.stack(rows).astype(np.int32) if rows else np.zeros((0, seq_len + 1), dtype=np.int32)
        return cls(stack("tokens"), stack("labels"), stack("doc_ids"), np.array([w.length for w in windows], dtype=np.int32))

    @classmethod
    def load(cls, folder: Path, part: str) -> "SFTWindows":
        return cls(*(np.load(folder / f"{part}_{name}.npy", mmap_mode="r") for name in cls.ARRAYS))

    def save(self, folder: Path, part: str) -> None:
        for name in self.ARRAYS:
            np.save(folder / f"{part}_{name}.npy", getattr(self, name))

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> SFTWindow:
        return SFTWindow(self.tokens[index].astype(np.int64), self.labels[index].astype(np.int64),
                         np.array(self.doc_ids[index], dtype=np.int32), int(self.lengths[index]))


@dataclass
class SFTData:
    train: Sequence[SFTWindow]
    val: Sequence[SFTWindow]
    skipped: Skipped
    conversations: int  # valid conversations read, before the split
    cache: Optional[Path] = None  # the tokenized cache folder, when one is used
    reused: bool = False  # the cache was there already: nothing was tokenized


def build_sft(source: ChatSource, chat: ChatFormat, seq_len: int, pad_id: int, pack: bool, val_fraction: float,
              workers: int) -> SFTData:
    """Read, split (by conversation, before packing), encode and window a source."""
    skipped = Skipped()
    conversations = list(read_conversations(source, skipped))
    if not conversations:
        raise DataError(f"kind={source.kind} paths={list(source.paths)} name={source.name}: no usable conversation"
                        f"{' (' + skipped.report() + ')' if skipped.counts else ''}; check the format option")
    train, val = split_held_out(conversations, val_fraction)
    make = pack_sft if pack else pad_sft
    windows = [make(encode_all(chat, part, skipped, workers), seq_len, pad_id, skipped) for part in (train, val)]
    return SFTData(*windows, skipped, len(conversations))


def load_sft(source: ChatSource, tokenizer: Union[ChatFormat, Tokenizer], seq_len: int, pad_id: int, pack: bool = True,
             val_fraction: float = 0.05, cache: Optional[Path] = None, builder: bool = True, workers: int = 0,
             wait_s: float = 3600.0) -> SFTData:
    """The SFT entry point: the windows of a source, built (`build_sft`) or, with a `cache` root, read from
    its tokenized cache, which the `builder` writes first if it is not there (the others wait `wait_s`)."""
    chat = as_chat_format(tokenizer)
    if cache is None:
        return build_sft(source, chat, seq_len, pad_id, pack, val_fraction, workers)
    folder = cache_folder(cache, "sft", {"source": source_stamp(source), "chat": chat.fingerprint, "seq_len": seq_len,
                                         "pad_id": pad_id, "pack": pack, "val_fraction": val_fraction})

    def build(tmp: Path) -> dict:
        data = build_sft(source, chat, seq_len, pad_id, pack, val_fraction, workers)
        for part, windows in (("train", data.train), ("val", data.val)):
            SFTWindows.of(windows, seq_len).save(tmp, part)
        return {"conversations": data.conversations, "train": len(data.train), "val": len(data.val),
                "skipped": data.skipped.counts, "examples": data.skipped.examples}

    meta, reused = load_or_build(folder, builder, build, wait_s)
    return SFTData(SFTWindows.load(folder, "train"), SFTWindows.load(folder, "val"),
                   Skipped(meta["skipped"], meta["examples"]), meta["conversations"], folder, reused)
