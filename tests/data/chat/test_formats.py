"""The table of row formats: TRL's standard and conversational forms are each detected; implicit prompts split
as TRL's extract_prompt does; a tools column reaches the conversation; a row of no format names its columns."""

import json

import pytest

from data.chat.formats import Conversation, PreferencePair, formats_of, parse_row
from data.chat.rows import BadRow
from data.errors import DataError

TOOLS = [{"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}]


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def parse(row, stage="sft", name="auto"):
    return parse_row(row, "here", formats_of(stage, name))


def test_each_sft_format_is_detected():
    call = {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "now", "arguments": {}}}],
            "name": None}  # a column the row does not fill: dropped
    assert parse({"messages": [user("Time?"), call, {"role": "tool", "content": "noon"}, assistant("Noon.")],
                  "tools": json.dumps(TOOLS)}) == Conversation(
        [user("Time?"), {k: v for k, v in call.items() if v is not None}, {"role": "tool", "content": "noon"},
         assistant("Noon.")], "here", TOOLS)
    assert parse({"text": "Plain text."}) == Conversation([], "here", text="Plain text.")
    assert parse({"text": "\n\nHuman: Hi\n\nAssistant: Hello"}).messages == [user("Hi"), assistant("Hello")]
    prompt = [user("2+2?"), assistant("4"), user("And 3+3?")]
    completion = parse({"prompt": prompt, "completion": [assistant("6")], "tools": TOOLS})
    assert completion == Conversation(prompt + [assistant("6")], "here", TOOLS, train_from=3)
    assert parse({"prompt": "2+2?", "completion": "4"}) == Conversation([user("2+2?"), assistant("4")], "here", train_from=1)
    with pytest.raises(BadRow, match="no assistant turn"):
        parse({"prompt": prompt, "completion": [user("no reply")]})


def test_preference_formats_and_trls_implicit_prompt():
    trl = pytest.importorskip("trl")
    explicit = parse({"prompt": [user("Sky?")], "chosen": [assistant("Blue.")], "rejected": [assistant("Green.")],
                      "tools": TOOLS}, "dpo")
    assert explicit == PreferencePair([user("Sky?")], "Blue.", "Green.", "here", TOOLS)
    conversational = {"chosen": [user("Sky?"), assistant("Blue.")], "rejected": [user("Sky?"), assistant("Green.")]}
    standard = {"chosen": "The sky is blue.", "rejected": "The sky is green."}
    for row in (conversational, standard):
        pair, reference = parse(row, "dpo"), trl.extract_prompt(row)
        prompt = reference["prompt"] if isinstance(reference["prompt"], list) else [user(reference["prompt"])]
        replies = [r if isinstance(r, str) else r[0]["content"] for r in (reference["chosen"], reference["rejected"])]
        assert (pair.prompt, pair.chosen, pair.rejected) == (prompt, *replies)
    assert parse(standard, "dpo").chosen == " blue."  # the space where they part goes to the replies, as in TRL
    hh = parse({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away"}, "dpo")
    assert (hh.prompt, hh.chosen, hh.rejected) == ([user("Hi")], "Hello", "Go away")


def test_a_row_of_no_format_names_its_columns_and_the_near_formats():
    with pytest.raises(BadRow, match=r"columns \[prompt, response\]: could be prompt_completion \(missing completion\)$"):
        parse({"prompt": "x", "response": "y"})
    with pytest.raises(BadRow, match=r"columns \[question\]: no format reads them \(explicit, hh, implicit\)$"):
        parse({"question": "x"}, "dpo")
    with pytest.raises(BadRow, match="malformed tools"):
        parse({"messages": [user("a"), assistant("b")], "tools": "{not json"})
    with pytest.raises(DataError, match="data.chat.format='alpaca' is unknown for dpo"):
        formats_of("dpo", "alpaca")
