"""SFT conversations: rows in the common formats -> chat messages -> packed training windows.

Each row (data/chat/rows.py) is turned into a list of chat messages, detected per row (`format=auto`)
or forced:

    messages            {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}
    prompt_completion   {"prompt": str, "completion": str}, or both lists of messages (TRL's conversational form)
    alpaca              {"instruction": str, "input": str (may be empty), "output": str}
    hh                  Anthropic HH-RLHF: {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ..."} (or "text")

Bad rows are skipped and counted by reason: malformed JSON, an unrecognised row, a malformed or empty
message, no assistant turn, and (once tokenized) a prompt longer than the sequence length. A
conversation longer than a window is truncated at its end and counted. The embedded default
(`kind: stdlib`) is data/chat/stdlib.py's questions.

Windows are `seq_len + 1` tokens like data/reader.py's: inputs tokens[:-1], targets labels[1:].
"""

import heapq
from dataclasses import dataclass
from typing import Iterator, List, Sequence

import numpy as np
from tokenizers import Tokenizer

from data.chat import stdlib
from data.chat.rows import BadRow, ChatSource, Skipped, check_messages, hh_messages, read_valid
from data.chat.template import IGNORE, Message, encode_conversation
from data.errors import DataError
from data.split import split_held_out

FORMATS = ("auto", "messages", "prompt_completion", "alpaca", "hh")


@dataclass
class Conversation:
    messages: List[Message]
    where: str  # file:line, dataset row, or stdlib name: for error reports


def as_messages(value: object, role: str) -> List[Message]:
    """A prompt/completion field: a string (one message of `role`) or a list of messages."""
    return [{"role": role, "content": value}] if isinstance(value, str) else value


def detect_format(row: dict) -> str:
    if "messages" in row:
        return "messages"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if isinstance(row.get("chosen", row.get("text")), str):
        return "hh"
    raise BadRow("unrecognised row")


def row_messages(row: object, format: str) -> List[Message]:
    if not isinstance(row, dict):
        raise BadRow("unrecognised row")
    format = detect_format(row) if format == "auto" else format
    try:
        if format == "messages":
            return row["messages"]
        if format == "prompt_completion":
            return as_messages(row["prompt"], "user") + as_messages(row["completion"], "assistant")
        if format == "alpaca":
            extra = row.get("input") or ""
            instruction = row["instruction"] + (f"\n\n{extra}" if extra.strip() else "")
            return [{"role": "user", "content": instruction}, {"role": "assistant", "content": row["output"]}]
        return hh_messages(row["chosen"] if "chosen" in row else row["text"])
    except (KeyError, TypeError):
        raise BadRow("unrecognised row") from None


def read_conversations(source: ChatSource, skipped: Skipped) -> Iterator[Conversation]:
    """The valid conversations of a source, in order; bad rows are counted into `skipped`."""
    if source.format not in FORMATS:
        raise DataError(f"format={source.format!r} is unknown; use one of: {', '.join(FORMATS)}")
    if source.kind == "stdlib":
        return iter([Conversation(messages, where) for messages, where in stdlib.conversations()])
    return read_valid(source, skipped, lambda row, where: Conversation(check_messages(row_messages(row, source.format)), where))


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


def encode_all(tokenizer: Tokenizer, conversations: Sequence[Conversation]) -> List[Encoded]:
    return [Encoded(*encode_conversation(tokenizer, c.messages), c.where) for c in conversations]


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


@dataclass
class SFTData:
    train: List[SFTWindow]
    val: List[SFTWindow]
    skipped: Skipped
    conversations: int  # valid conversations read, before the split


def load_sft(source: ChatSource, tokenizer: Tokenizer, seq_len: int, pad_id: int, pack: bool = True,
             val_fraction: float = 0.05) -> SFTData:
    """Read, split (by conversation, before packing), encode and window a source: the SFT entry point."""
    skipped = Skipped()
    conversations = list(read_conversations(source, skipped))
    if not conversations:
        raise DataError(f"kind={source.kind} paths={list(source.paths)} name={source.name}: no usable conversation"
                        f"{' (' + skipped.report() + ')' if skipped.counts else ''}; check the format option")
    train, val = split_held_out(conversations, val_fraction)
    make = pack_sft if pack else pad_sft
    return SFTData(make(encode_all(tokenizer, train), seq_len, pad_id, skipped),
                   make(encode_all(tokenizer, val), seq_len, pad_id, skipped), skipped, len(conversations))
