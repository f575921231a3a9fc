"""SFT conversations: read the common formats, skip and count bad rows, and pack them into training windows.

Rows come from local JSON/JSONL/Parquet files (globs, directories, .gz: the handling of data/sources.py),
a Hugging Face dataset, or the embedded standard-library questions (data/stdlib_chat.py). Each row is
turned into a list of chat messages, detected per row (`format=auto`) or forced:

    messages            {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}
    prompt_completion   {"prompt": str, "completion": str}, or both lists of messages (TRL's conversational form)
    alpaca              {"instruction": str, "input": str (may be empty), "output": str}
    hh                  Anthropic HH-RLHF: {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ..."} (or "text")

Bad rows are skipped and counted by reason, with the first locations kept for the report, never fatal:
malformed JSON, an unrecognised row, a malformed or empty message, no assistant turn, and (once
tokenized) a prompt longer than the sequence length. A conversation longer than a window is truncated
at its end and counted.

Windows are `seq_len + 1` tokens like data/reader.py's: inputs tokens[:-1], targets labels[1:].
"""

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from tokenizers import Tokenizer

from data.chat import IGNORE, ROLES, Message, encode_conversation
from data.errors import DataError
from data.prepare import is_validation
from data.sources import data_suffix, open_text, resolve_local_paths

FORMATS = ("auto", "messages", "prompt_completion", "alpaca", "hh")
HH_TURN = re.compile(r"\n\n(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}


@dataclass
class ChatSource:
    """Where SFT conversations (or preference pairs, data/preferences.py) come from."""

    kind: str = "stdlib"  # stdlib | local | hf
    paths: List[str] = field(default_factory=list)  # local: files, globs, directories of .json/.jsonl/.parquet (.gz)
    format: str = "auto"  # auto (per row) | messages | prompt_completion | alpaca | hh
    name: Optional[str] = None  # hf: a hub id, a local dataset folder, or json/parquet with data_files
    config_name: Optional[str] = None
    data_files: List[str] = field(default_factory=list)
    split: str = "train"
    max_rows: Optional[int] = None  # read at most this many rows


class BadRow(Exception):
    """A row that is skipped; the message is the reason it is counted under."""


@dataclass
class Skipped:
    """Rows passed over, by reason, with the first few locations of each for the report."""

    counts: Dict[str, int] = field(default_factory=dict)
    examples: Dict[str, List[str]] = field(default_factory=dict)
    keep: int = 3

    def add(self, reason: str, where: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if len(self.examples.setdefault(reason, [])) < self.keep:
            self.examples[reason].append(where)

    def report(self) -> str:
        return "; ".join(f"{reason}: {n} (e.g. {', '.join(self.examples[reason])})" for reason, n in self.counts.items())


@dataclass
class Conversation:
    messages: List[Message]
    where: str  # file:line, dataset row, or stdlib name: for error reports


# --- rows -------------------------------------------------------------------------------------------


def file_rows(path: Path, skipped: Skipped) -> Iterator[Tuple[object, str]]:
    """(row, location) of one local file: a JSON list, JSON lines (.jsonl, or .json as `datasets` writes it)
    or Parquet. A malformed JSON line is skipped and counted."""
    suffix = data_suffix(path)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from ((row, f"{path}: row {i}") for i, row in enumerate(pq.read_table(path).to_pylist()))
        return
    if suffix not in (".json", ".jsonl"):
        raise DataError(f"{path}: conversations are read from .json, .jsonl or .parquet files, not {suffix or 'no suffix'}")
    with open_text(path) as f:
        is_list = f.read(4096).lstrip().startswith("[")
    with open_text(path) as f:
        if is_list:
            try:
                rows = json.load(f)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{error.lineno}: malformed JSON ({error.msg}); fix the file") from None
            yield from ((row, f"{path}: item {i}") for i, row in enumerate(rows))
            return
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    yield json.loads(line), f"{path}:{number}"
                except json.JSONDecodeError:
                    skipped.add("malformed JSON", f"{path}:{number}")


def hf_rows(source: ChatSource) -> Iterator[Tuple[object, str]]:
    if not source.name:
        raise DataError("name is empty: name a dataset (hub id, local folder, or json/parquet with data_files)")
    import datasets

    try:
        dataset = datasets.load_dataset(source.name, source.config_name, data_files=list(source.data_files) or None,
                                        split=source.split)
    except Exception as error:  # datasets raises many types; the first line of the message is what the user needs
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise DataError(f"name={source.name!r}: datasets.load_dataset failed: {first_line}") from None
    yield from ((row, f"{source.name} row {i}") for i, row in enumerate(dataset))


def read_rows(source: ChatSource, skipped: Skipped) -> Iterator[Tuple[object, str]]:
    if source.format not in FORMATS:
        raise DataError(f"format={source.format!r} is unknown; use one of: {', '.join(FORMATS)}")
    if source.kind == "local":
        rows = (r for path in resolve_local_paths(source.paths) for r in file_rows(path, skipped))
    elif source.kind == "hf":
        rows = hf_rows(source)
    else:
        raise DataError(f"kind={source.kind!r} cannot be read as rows; use local or hf (or stdlib)")
    for index, row in enumerate(rows):
        if source.max_rows is not None and index >= source.max_rows:
            return
        yield row


# --- rows -> messages -------------------------------------------------------------------------------


def hh_messages(dialogue: str) -> List[Message]:
    """"\\n\\nHuman: a\\n\\nAssistant: b" -> [user a, assistant b]; text before the first turn must be empty."""
    pieces = HH_TURN.split(dialogue)  # ["", "Human", " a", "Assistant", " b", ...]
    if len(pieces) < 3 or pieces[0].strip():
        raise BadRow("not an HH-RLHF dialogue")
    return [{"role": HH_ROLES[role], "content": text.strip()} for role, text in zip(pieces[1::2], pieces[2::2])]


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


def check_messages(messages: object) -> List[Message]:
    """Raise BadRow unless `messages` is a list of {role, content} with text, no empty one, and an assistant turn."""
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in messages
    ):
        raise BadRow("malformed message")
    if any(not m["content"].strip() for m in messages):
        raise BadRow("empty message")
    if not any(m["role"] == "assistant" for m in messages):
        raise BadRow("no assistant turn")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def read_conversations(source: ChatSource, skipped: Skipped) -> Iterator[Conversation]:
    """The valid conversations of a source, in order; bad rows are counted into `skipped`."""
    if source.kind == "stdlib":
        from data.stdlib_chat import sft_conversations

        yield from sft_conversations()
        return
    for row, where in read_rows(source, skipped):
        try:
            yield Conversation(check_messages(row_messages(row, source.format)), where)
        except BadRow as reason:
            skipped.add(str(reason), where)


def split_held_out(items: Sequence, val_fraction: float) -> Tuple[list, list]:
    """(train, val): items 0, 1/f, 2/f, ... are held out, the rule of data/prepare.py's is_validation."""
    train, val = [], []
    for ordinal, item in enumerate(items):
        (val if is_validation(ordinal, val_fraction) else train).append(item)
    return train, val


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
    return SFTWindow(tokens, labels, doc_ids)


def pack_sft(examples: Sequence[Encoded], seq_len: int, pad_id: int, skipped: Skipped) -> List[SFTWindow]:
    """Greedy in order: each conversation goes into the current window if it fits whole, else starts the next
    one; the rest of a window is padding (PAD, IGNORE). No conversation is split across windows."""
    windows, current, used = [], [], 0
    for example in fitted(examples, seq_len, skipped):
        if used + len(example.input_ids) > seq_len + 1:
            windows.append(window(current, seq_len, pad_id))
            current, used = [], 0
        current.append(example)
        used += len(example.input_ids)
    if current:
        windows.append(window(current, seq_len, pad_id))
    return windows


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
