"""Rows of chat data: where they come from, and the reader that skips and counts the bad ones.

Rows come from local JSON/JSONL/Parquet files (globs, directories, .gz: the handling of data/sources.py)
or a Hugging Face dataset. `read_valid(source, skipped, parse)` is the one loop SFT and DPO share: every
row goes through `parse`; a row it rejects with BadRow is counted under the reason, with its first
locations kept for the report, never fatal.
"""

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple, TypeVar

from data.chat.template import ROLES, Message
from data.errors import DataError
from data.sources import data_suffix, open_text, resolve_local_paths

HH_TURN = re.compile(r"\n\n(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}
MESSAGE_ROLES = ROLES + ("tool",)  # tool turns need a chat template that renders them (data/chat/chat_format.py)
T = TypeVar("T")


@dataclass
class ChatSource:
    """Where SFT conversations (or DPO preference pairs) come from."""

    kind: str = "stdlib"  # stdlib | local | hf
    paths: List[str] = field(default_factory=list)  # local: files, globs, directories of .json/.jsonl/.parquet (.gz)
    # auto (per row) | SFT: messages | text | prompt_completion | alpaca | hh; DPO: explicit | implicit | hh
    format: str = "auto"
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

    def dropped(self) -> int:
        """Rows left out; reasons ending in "(kept)" (e.g. a truncated conversation) were used, not dropped."""
        return sum(n for reason, n in self.counts.items() if not reason.endswith("(kept)"))


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
    """(row, location) of a local or Hugging Face source, at most `max_rows`."""
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


def read_valid(source: ChatSource, skipped: Skipped, parse: Callable[[object, str], T]) -> Iterator[T]:
    """parse(row, location) of every row; the rows it rejects with BadRow are counted into `skipped`."""
    for row, where in read_rows(source, skipped):
        try:
            yield parse(row, where)
        except BadRow as reason:
            skipped.add(str(reason), where)


def hh_messages(dialogue: str) -> List[Message]:
    """"\\n\\nHuman: a\\n\\nAssistant: b" -> [user a, assistant b]; text before the first turn must be empty."""
    pieces = HH_TURN.split(dialogue)  # ["", "Human", " a", "Assistant", " b", ...]
    if len(pieces) < 3 or pieces[0].strip():
        raise BadRow("not an HH-RLHF dialogue")
    return [{"role": HH_ROLES[role], "content": text.strip()} for role, text in zip(pieces[1::2], pieces[2::2])]


def check_messages(messages: object) -> List[Message]:
    """Raise BadRow unless `messages` is a list of {role, content} with text (or an assistant's tool_calls), no
    empty one, and an assistant turn. Keys whose value is None are dropped (a column a row does not fill), the
    others kept for a chat template (tool_calls, tool_call_id, name)."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise BadRow("malformed message")
    messages = [{key: value for key, value in m.items() if value is not None} for m in messages]
    if not all(m.get("role") in MESSAGE_ROLES and isinstance(m.get("content", ""), str) and
               ("content" in m or m.get("tool_calls")) for m in messages):
        raise BadRow("malformed message")
    if any(not m.get("content", "").strip() and not m.get("tool_calls") for m in messages):
        raise BadRow("empty message")
    if not any(m["role"] == "assistant" for m in messages):
        raise BadRow("no assistant turn")
    return messages
