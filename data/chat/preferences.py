"""Preference pairs for DPO: a prompt, a chosen and a rejected response, tokenized and collated into batches.

Rows (read by data/chat/rows.py, like SFT rows) come in three shapes, detected per row:

    {"prompt": [messages] or str, "chosen": [assistant message(s)] or str, "rejected": ...}   explicit prompt
    {"chosen": [messages], "rejected": [messages]}      whole conversations; the common leading messages are the prompt
    {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "..."}   HH-RLHF dialogues; the common text up to
                                                        the last "\\n\\nAssistant:" is the prompt (as in Rafailov et al. 2023)

Skipped and counted: identical chosen and rejected, an empty response, no common prompt, a prompt that
leaves no room for a response within `max_length` tokens (plus the row-level reasons of SFT). Responses
that do not fit are cut at the end. Labels are only on the response tokens (content + <|end_of_turn|>).
"""

import os
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from tokenizers import Tokenizer

from data.chat import stdlib
from data.chat.rows import BadRow, ChatSource, Skipped, check_messages, hh_messages, read_valid
from data.chat.template import IGNORE, Message, encode_conversation
from data.errors import DataError
from data.split import split_held_out

HH_ASSISTANT = "\n\nAssistant:"


@dataclass
class PreferencePair:
    prompt: List[Message]  # ends with a user turn
    chosen: str  # the preferred assistant reply
    rejected: str
    where: str


def reply_of(messages: object) -> str:
    """The text of a response given as a string or as a list holding one assistant message."""
    if isinstance(messages, str):
        return messages
    if isinstance(messages, list) and len(messages) == 1 and isinstance(messages[0], dict) \
            and messages[0].get("role") == "assistant" and isinstance(messages[0].get("content"), str):
        return messages[0]["content"]
    raise BadRow("malformed response")


def split_dialogues(chosen: str, rejected: str) -> Tuple[List[Message], str, str]:
    """HH-RLHF: the shared text up to its last "\\n\\nAssistant:" is the prompt; the rest are the responses."""
    common = os.path.commonprefix([chosen, rejected])
    cut = common.rfind(HH_ASSISTANT)
    if cut < 0:
        raise BadRow("no common prompt")
    prompt = hh_messages(common[:cut])
    chosen_reply, rejected_reply = chosen[cut + len(HH_ASSISTANT):], rejected[cut + len(HH_ASSISTANT):]
    if "\n\nHuman:" in chosen_reply or "\n\nHuman:" in rejected_reply:
        raise BadRow("no common prompt")  # they part before the last turn: not one prompt with two replies
    return prompt, chosen_reply.strip(), rejected_reply.strip()


def split_conversations(chosen: list, rejected: list) -> Tuple[List[Message], str, str]:
    """Message lists: the common leading messages are the prompt; each must end in one assistant reply."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise BadRow("no common prompt")
    return chosen[:shared], reply_of(chosen[shared:]), reply_of(rejected[shared:])


def row_pair(row: object, where: str) -> PreferencePair:
    if not isinstance(row, dict) or "chosen" not in row or "rejected" not in row:
        raise BadRow("unrecognised row")
    chosen, rejected = row["chosen"], row["rejected"]
    if "prompt" in row:
        prompt = row["prompt"]
        prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        chosen, rejected = reply_of(chosen), reply_of(rejected)
    elif isinstance(chosen, str) and isinstance(rejected, str):
        prompt, chosen, rejected = split_dialogues(chosen, rejected)
    elif isinstance(chosen, list) and isinstance(rejected, list):
        prompt, chosen, rejected = split_conversations(chosen, rejected)
    else:
        raise BadRow("unrecognised row")
    return PreferencePair(prompt, chosen, rejected, where)


def checked(pair: PreferencePair) -> PreferencePair:
    if not pair.chosen.strip() or not pair.rejected.strip():
        raise BadRow("empty response")
    if pair.chosen.strip() == pair.rejected.strip():
        raise BadRow("identical chosen and rejected")
    if not isinstance(pair.prompt, list) or not pair.prompt or pair.prompt[-1].get("role") != "user":
        raise BadRow("no common prompt")  # a reply needs a user turn to answer
    prompt = check_messages(pair.prompt + [{"role": "assistant", "content": pair.chosen}])[:-1]
    return PreferencePair(prompt, pair.chosen, pair.rejected, pair.where)


def read_pairs(source: ChatSource, skipped: Skipped) -> Iterator[PreferencePair]:
    """The valid pairs of a source, in order; bad rows are counted into `skipped`."""
    if source.kind == "stdlib":
        return iter([PreferencePair(*pair) for pair in stdlib.preference_pairs()])
    return read_valid(source, skipped, lambda row, where: checked(row_pair(row, where)))


# --- tokens -----------------------------------------------------------------------------------------


@dataclass
class EncodedPair:
    chosen_ids: List[int]  # prompt + chosen reply
    chosen_labels: List[int]  # IGNORE on the prompt, the token on the reply
    rejected_ids: List[int]
    rejected_labels: List[int]
    where: str


def encode_pair(tokenizer: Tokenizer, pair: PreferencePair, max_length: int, skipped: Skipped) -> Optional[EncodedPair]:
    """Both sides cut to `max_length` tokens; None (counted) when the prompt leaves no response token."""
    sides = []
    for reply in (pair.chosen, pair.rejected):
        messages = pair.prompt + [{"role": "assistant", "content": reply}]
        ids, labels = encode_conversation(tokenizer, messages, max_tokens=max_length, last_turn_only=True)
        if all(label == IGNORE for label in labels):
            skipped.add("prompt longer than max_length", pair.where)
            return None
        sides += [ids, labels]
    return EncodedPair(*sides, pair.where)


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


def load_pairs(source: ChatSource, tokenizer: Tokenizer, max_length: int, val_fraction: float = 0.05
               ) -> Tuple[List[EncodedPair], List[EncodedPair], Skipped]:
    """(train pairs, held-out pairs, skipped): the DPO entry point. The held-out rule is SFT's (by pair ordinal)."""
    skipped = Skipped()
    pairs = list(read_pairs(source, skipped))
    if not pairs:
        raise DataError(f"kind={source.kind} paths={list(source.paths)} name={source.name}: no usable preference pair"
                        f"{' (' + skipped.report() + ')' if skipped.counts else ''}; rows need chosen and rejected")
    train, val = (
        [e for e in (encode_pair(tokenizer, p, max_length, skipped) for p in part) if e is not None]
        for part in split_held_out(pairs, val_fraction)
    )
    return train, val, skipped
