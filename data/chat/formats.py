"""The row formats of SFT and DPO data: one table, with per-row detection (`format=auto`) or a forced format.

TRL 1.16's dataset formats (standard = strings, conversational = lists of messages), plus Alpaca and HH-RLHF:

    stage  format             columns                       becomes
    sft    messages           messages (+tools)             conversational language modelling: every assistant turn trained
    sft    text               text                          standard language modelling: every token trained, EOS appended
    sft    prompt_completion  prompt, completion (+tools)   the completion trained; strings are one user and one assistant turn
    sft    alpaca             instruction, input?, output   one user turn (instruction, input), one assistant turn
    sft    hh                 chosen or text                an HH-RLHF dialogue "\\n\\nHuman: ...\\n\\nAssistant: ..."
    dpo    explicit           prompt, chosen, rejected      strings (a user prompt and two replies) or messages (+tools)
    dpo    implicit           chosen, rejected              messages: their shared leading messages are the prompt; strings:
                                                            their shared text (TRL's extract_prompt) (+tools)
    dpo    hh                 chosen, rejected              HH-RLHF dialogues: the shared text up to the last "\\n\\nAssistant:"

A `tools` column (a list of JSON schemas, or its JSON text) is passed to the chat template. Messages may
carry `tool_calls`, `tool_call_id` and `name` and the role `tool` (a chat template renders them). A row that
fits no format is skipped and counted under a reason naming its columns and the formats it could be.
"""

import json
import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple, Union

from data.chat.rows import BadRow, check_messages, hh_messages
from data.chat.template import Message
from data.errors import DataError

HH_HUMAN, HH_ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


@dataclass
class Conversation:
    messages: List[Message]
    where: str  # file:line, dataset row, or stdlib name: for error reports
    tools: Optional[list] = None  # JSON schemas for the chat template
    train_from: int = 0  # assistant turns from this message on are trained (a prompt-completion row: its completion)
    text: Optional[str] = None  # a standard language-modelling row: plain text, no messages


@dataclass
class PreferencePair:
    prompt: List[Message]  # ends with a user (or tool) turn
    chosen: str  # the preferred assistant reply
    rejected: str
    where: str
    tools: Optional[list] = None


@dataclass(frozen=True)
class RowFormat:
    name: str
    stage: str  # sft | dpo
    columns: Tuple[str, ...]  # all needed; optional ones are not listed
    fits: Callable[[dict], bool]  # the row has this format's columns with this format's types
    parse: Callable[[dict, str], Union[Conversation, PreferencePair]]


def is_dialogue(value: object) -> bool:
    return isinstance(value, str) and value.startswith(HH_HUMAN)


def tools_of(row: dict) -> Optional[list]:
    tools = row.get("tools")
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError:
            raise BadRow("malformed tools (not JSON)") from None
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        raise BadRow("malformed tools (not a list of JSON schemas)")
    return tools or None


def as_messages(value: object, role: str) -> List[Message]:
    """A prompt/completion field: a string (one message of `role`) or a list of messages."""
    return [{"role": role, "content": value}] if isinstance(value, str) else value


# --- SFT ------------------------------------------------------------------------------------------------


def sft_messages(row: dict, where: str) -> Conversation:
    return Conversation(check_messages(row["messages"]), where, tools_of(row))


def sft_text(row: dict, where: str) -> Conversation:
    if not row["text"].strip():
        raise BadRow("empty text")
    return Conversation([], where, text=row["text"])


def sft_prompt_completion(row: dict, where: str) -> Conversation:
    prompt = as_messages(row["prompt"], "user")
    messages = check_messages(prompt + as_messages(row["completion"], "assistant"))
    if not any(m["role"] == "assistant" for m in messages[len(prompt):]):
        raise BadRow("no assistant turn")
    return Conversation(messages, where, tools_of(row), train_from=len(prompt))


def sft_alpaca(row: dict, where: str) -> Conversation:
    extra = row.get("input") or ""
    instruction = row["instruction"] + (f"\n\n{extra}" if extra.strip() else "")
    return Conversation(check_messages([{"role": "user", "content": instruction},
                                        {"role": "assistant", "content": row["output"]}]), where)


def sft_hh(row: dict, where: str) -> Conversation:
    return Conversation(check_messages(hh_messages(row["chosen"] if "chosen" in row else row["text"])), where)


# --- preference pairs -----------------------------------------------------------------------------------


def reply_of(messages: object) -> str:
    """The text of a response given as a string or as a list holding one assistant message."""
    if isinstance(messages, str):
        return messages
    if isinstance(messages, list) and len(messages) == 1 and isinstance(messages[0], dict) \
            and messages[0].get("role") == "assistant" and isinstance(messages[0].get("content"), str):
        return messages[0]["content"]
    raise BadRow("malformed response")


def checked(pair: PreferencePair) -> PreferencePair:
    if not pair.chosen.strip() or not pair.rejected.strip():
        raise BadRow("empty response")
    if pair.chosen.strip() == pair.rejected.strip():
        raise BadRow("identical chosen and rejected")
    if not isinstance(pair.prompt, list) or not pair.prompt or \
            not isinstance(pair.prompt[-1], dict) or pair.prompt[-1].get("role") not in ("user", "tool"):
        raise BadRow("no common prompt")  # a reply needs a user turn to answer
    prompt = check_messages(pair.prompt + [{"role": "assistant", "content": pair.chosen}])[:-1]
    return PreferencePair(prompt, pair.chosen, pair.rejected, pair.where, pair.tools)


def dpo_explicit(row: dict, where: str) -> PreferencePair:
    prompt = as_messages(row["prompt"], "user")
    return checked(PreferencePair(prompt, reply_of(row["chosen"]), reply_of(row["rejected"]), where, tools_of(row)))


def shared_text(chosen: str, rejected: str) -> Tuple[str, str, str]:
    """TRL's extract_prompt on strings: the common prefix is the prompt; a space where they part goes to the replies."""
    cut = len(os.path.commonprefix([chosen, rejected]))
    if cut < min(len(chosen), len(rejected)) and cut and chosen[cut - 1] == " ":
        cut -= 1
    if not chosen[:cut].strip():
        raise BadRow("no common prompt")
    return chosen[:cut], chosen[cut:], rejected[cut:]


def shared_messages(chosen: list, rejected: list) -> Tuple[List[Message], str, str]:
    """Message lists: the common leading messages are the prompt; each must end in one assistant reply."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise BadRow("no common prompt")
    return chosen[:shared], reply_of(chosen[shared:]), reply_of(rejected[shared:])


def dpo_implicit(row: dict, where: str) -> PreferencePair:
    chosen, rejected = row["chosen"], row["rejected"]
    if isinstance(chosen, str):
        prompt, chosen, rejected = shared_text(chosen, rejected)
        prompt = as_messages(prompt, "user")
    else:
        prompt, chosen, rejected = shared_messages(chosen, rejected)
    return checked(PreferencePair(prompt, chosen, rejected, where, tools_of(row)))


def dpo_hh(row: dict, where: str) -> PreferencePair:
    """The shared text up to its last "\\n\\nAssistant:" is the prompt (as in Rafailov et al. 2023)."""
    chosen, rejected = row["chosen"], row["rejected"]
    common = os.path.commonprefix([chosen, rejected])
    cut = common.rfind(HH_ASSISTANT)
    if cut < 0:
        raise BadRow("no common prompt")
    prompt = hh_messages(common[:cut])
    chosen_reply, rejected_reply = chosen[cut + len(HH_ASSISTANT):], rejected[cut + len(HH_ASSISTANT):]
    if HH_HUMAN in chosen_reply or HH_HUMAN in rejected_reply:
        raise BadRow("no common prompt")  # they part before the last turn: not one prompt with two replies
    return checked(PreferencePair(prompt, chosen_reply.strip(), rejected_reply.strip(), where))


def is_list(*values) -> bool:
    return all(isinstance(v, list) for v in values)


def is_text(*values) -> bool:
    return all(isinstance(v, str) for v in values)


# In detection order: an HH dialogue in a `text` column is read as HH, other text as plain text.
ROW_FORMATS = (
    RowFormat("messages", "sft", ("messages",), lambda r: True, sft_messages),
    RowFormat("prompt_completion", "sft", ("prompt", "completion"),
              lambda r: is_text(r["prompt"], r["completion"]) or is_list(r["prompt"], r["completion"]),
              sft_prompt_completion),
    RowFormat("alpaca", "sft", ("instruction", "output"), lambda r: is_text(r["instruction"], r["output"]), sft_alpaca),
    RowFormat("hh", "sft", ("chosen",), lambda r: is_text(r["chosen"]), sft_hh),
    RowFormat("hh", "sft", ("text",), lambda r: is_dialogue(r["text"]), sft_hh),
    RowFormat("text", "sft", ("text",), lambda r: is_text(r["text"]), sft_text),
    RowFormat("explicit", "dpo", ("prompt", "chosen", "rejected"),
              lambda r: (is_text(r["prompt"]) or is_list(r["prompt"])) and
              (is_text(r["chosen"], r["rejected"]) or is_list(r["chosen"], r["rejected"])), dpo_explicit),
    RowFormat("hh", "dpo", ("chosen", "rejected"), lambda r: is_dialogue(r["chosen"]) and is_dialogue(r["rejected"]),
              dpo_hh),
    RowFormat("implicit", "dpo", ("chosen", "rejected"),
              lambda r: is_text(r["chosen"], r["rejected"]) or is_list(r["chosen"], r["rejected"]), dpo_implicit),
)
SFT_FORMATS = ("messages", "text", "prompt_completion", "alpaca", "hh")
DPO_FORMATS = ("explicit", "implicit", "hh")


def formats_of(stage: str, name: str = "auto") -> List[RowFormat]:
    """The formats a stage's rows are tried against, in detection order (one, when `name` forces it)."""
    table = [f for f in ROW_FORMATS if f.stage == stage]
    names = SFT_FORMATS if stage == "sft" else DPO_FORMATS
    if name != "auto" and name not in names:
        raise DataError(f"data.chat.format={name!r} is unknown for {stage}; use auto or one of: {', '.join(names)}")
    return table if name == "auto" else [f for f in table if f.name == name]


def unrecognised(row: dict, candidates: List[RowFormat]) -> BadRow:
    """What the row has, and what each format sharing a column with it lacks."""
    missing: dict = {}  # the columns a format lacks -> the formats that lack just those
    for f in candidates:
        if set(f.columns) & set(row):
            lacks = tuple(c for c in f.columns if c not in row)
            missing.setdefault(lacks, []).extend(n for n in [f.name] if n not in missing.get(lacks, []))
    could = "; ".join(f"{' or '.join(names)} ({'missing ' + ', '.join(lacks) if lacks else 'other value types'})"
                      for lacks, names in missing.items())
    columns = f"unrecognised row with columns [{', '.join(sorted(row))}]"
    if not could:
        return BadRow(f"{columns}: no format reads them ({', '.join(dict.fromkeys(f.name for f in candidates))})")
    return BadRow(f"{columns}: could be {could}")


def parse_row(row: object, where: str, formats: List[RowFormat]) -> Union[Conversation, PreferencePair]:
    """The row as the first format it fits; BadRow (naming its columns and the near formats) if none."""
    if not isinstance(row, dict):
        raise BadRow(f"unrecognised row (a {type(row).__name__}, not an object with columns)")
    for candidate in formats:
        if all(column in row for column in candidate.columns) and candidate.fits(row):
            return candidate.parse(row, where)
    raise unrecognised(row, formats)
