"""Preference pairs: the three row shapes, each skip reason counted, labels only on responses, padded batches."""

import json
import time

import pytest
import torch

from data.chat.template import IGNORE, encode_conversation, encode_prompt
from data.config import TokenizerConfig
from data.chat.preferences import collate_pairs, encode_pair, load_pairs, read_pairs
from data.chat.rows import ChatSource, Skipped
from data.split import split_held_out
from data.tokenizer import train_bpe
from tests.shared_data import SHARED_DATA as SHARED

PAD = 0


@pytest.fixture(scope="module")
def tokenizer():
    from pydoc_data.topics import topics

    return train_bpe([topics[n] for n in sorted(topics)][:40], TokenizerConfig(vocab_size=600))


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def read(tmp_path, rows):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    skipped = Skipped()
    return list(read_pairs(ChatSource(kind="local", paths=[str(path)]), skipped)), skipped, path


def test_row_shapes(tmp_path):
    system = {"role": "system", "content": "Be kind."}
    rows = [
        {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Rome."},
        {"prompt": [system, user("2+2?")], "chosen": [assistant("4")], "rejected": [assistant("5")]},
        {"chosen": [user("Hi"), assistant("Hello"), user("Name?"), assistant("Ada")],
         "rejected": [user("Hi"), assistant("Hello"), user("Name?"), assistant("No.")]},
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Help me?\n\nAssistant: Gladly.",
         "rejected": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Help me?\n\nAssistant: No."},
    ]
    pairs, skipped, _ = read(tmp_path, rows)
    assert not skipped.counts
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [
        ([user("Capital of France?")], "Paris.", "Rome."),
        ([system, user("2+2?")], "4", "5"),
        ([user("Hi"), assistant("Hello"), user("Name?")], "Ada", "No."),
        ([user("Hi"), assistant("Hello"), user("Help me?")], "Gladly.", "No."),
    ]


def test_each_skip_reason_is_counted(tmp_path, tokenizer):
    rows = [
        {"prompt": "q", "chosen": "same", "rejected": "same"},  # 1: identical
        {"prompt": "q", "chosen": " ", "rejected": "no"},  # 2: empty response
        {"chosen": [user("a"), assistant("x")], "rejected": [user("b"), assistant("y")]},  # 3: no common prompt
        {"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: b\n\nAssistant: y"},  # 4: no common prompt
        {"prompt": "word " * 300, "chosen": "yes", "rejected": "no"},  # 5: prompt too long once tokenized
        {"prompt": "q", "chosen": "fine", "rejected": "also fine"},  # 6
        {"chosen": "only one side"},  # 7: unrecognised: its columns, and what the near formats miss
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_pairs(ChatSource(kind="local", paths=[str(path)]), tokenizer, max_length=64, val_fraction=0)
    train, val, skipped = data.train, data.val, data.skipped
    assert skipped.counts == {"identical chosen and rejected": 1, "empty response": 1, "no common prompt": 2,
                              "unrecognised row with columns [chosen]: could be explicit (missing prompt, rejected); "
                              "hh or implicit (missing rejected)": 1, "prompt longer than max_length": 1}
    assert skipped.examples["no common prompt"] == [f"{path}:3", f"{path}:4"]
    assert skipped.examples["prompt longer than max_length"] == [f"{path}:5"] and val == []
    assert [p.where for p in train] == [f"{path}:6"]


def test_labels_only_on_the_response_and_truncation(tokenizer):
    from data.chat.preferences import PreferencePair

    prompt = [user("Hi"), assistant("Hello there"), user("And then?")]
    pair = PreferencePair(prompt, "A short reply.", "A much longer reply " * 20, "test")
    skipped = Skipped()
    encoded = encode_pair(tokenizer, pair, max_length=80, skipped=skipped)
    prompt_ids = encode_prompt(tokenizer, prompt)
    for ids, labels, reply in [(encoded.chosen_ids, encoded.chosen_labels, pair.chosen),
                               (encoded.rejected_ids, encoded.rejected_labels, pair.rejected)]:
        assert ids[: len(prompt_ids)] == prompt_ids and all(l == IGNORE for l in labels[: len(prompt_ids)])
        full_ids, full_labels = encode_conversation(tokenizer, prompt + [assistant(reply)])
        assert ids == full_ids[:80]  # cut at the end only
        # the reply's tokens (and its <|end_of_turn|> when it fits) are labelled; the trailing newline is not
        assert labels[len(prompt_ids):] == full_labels[len(prompt_ids):80]
    assert len(encoded.rejected_ids) == 80 > len(encoded.chosen_ids)
    assert tokenizer.decode([t for t in encoded.chosen_labels if t != IGNORE], skip_special_tokens=False) == \
        "A short reply.<|end_of_turn|>"
    assert not skipped.counts


@pytest.mark.parametrize("multiple_of, cap, expected", [
    (1, 0, lambda longest: longest),
    (64, 0, lambda longest: 64),  # a few shapes only: rounded up
    (64, "longest+2", lambda longest: longest + 2),  # never past the sequence length
])
def test_collate_pads_both_sides_to_one_length(tokenizer, multiple_of, cap, expected):
    from data.chat.preferences import PreferencePair

    pairs = [PreferencePair([user(q)], c, r, "t") for q, c, r in [("One?", "Yes.", "No, never, not at all."),
                                                                    ("A longer question here?", "Ok", "Nope")]]
    encoded = [encode_pair(tokenizer, p, 128, Skipped()) for p in pairs]
    longest = max(len(s) for e in encoded for s in (e.chosen_ids, e.rejected_ids))
    assert longest < 62
    batch = collate_pairs(encoded, PAD, multiple_of, longest + 2 if cap == "longest+2" else cap)
    length = expected(longest)
    for name in ("chosen", "rejected"):
        ids_BL, labels_BL = getattr(batch, f"{name}_ids_BL"), getattr(batch, f"{name}_labels_BL")
        assert ids_BL.shape == labels_BL.shape == (2, length) and ids_BL.dtype == labels_BL.dtype == torch.long
        for row, e in enumerate(encoded):
            n = len(getattr(e, f"{name}_ids"))
            assert ids_BL[row, :n].tolist() == getattr(e, f"{name}_ids") and (ids_BL[row, n:] == PAD).all()
            assert labels_BL[row, :n].tolist() == getattr(e, f"{name}_labels") and (labels_BL[row, n:] == IGNORE).all()


def test_embedded_stdlib_pairs(tokenizer):
    started = time.perf_counter()
    data = load_pairs(ChatSource(kind="stdlib"), tokenizer, max_length=256, val_fraction=0.05)
    train, val, skipped = data.train, data.val, data.skipped
    assert time.perf_counter() - started < 5
    assert 1000 <= len(train) + len(val) + sum(skipped.counts.values()) <= 2000 and len(val) >= 50
    pairs = list(read_pairs(ChatSource(kind="stdlib"), Skipped()))
    assert all(p.chosen != p.rejected for p in pairs)
    assert len({p.prompt[-1]["content"] for p in pairs}) == len(pairs)  # every question asked once
    _, held_out = split_held_out(pairs, 0.05)
    assert [e.where for e in val] == [p.where for p in held_out][: len(val)]


def test_real_hh_rlhf_pairs(tokenizer):
    path = SHARED / "hh_rlhf_harmless_base_test.jsonl.gz"
    if not path.is_file():
        pytest.skip(f"{path} is absent (real data sets are optional)")
    # offensive red-teaming text: only counts are asserted, nothing is printed
    data = load_pairs(ChatSource(kind="local", paths=[str(path)]), tokenizer, max_length=512)
    train, val, skipped = data.train, data.val, data.skipped
    assert len(train) + len(val) + sum(skipped.counts.values()) == 2312
    assert set(skipped.counts) <= {"empty response", "identical chosen and rejected", "no common prompt",
                                   "prompt longer than max_length"}
    assert len(train) > 1500 and len(val) > 50
    assert all(any(l != IGNORE for l in e.chosen_labels) and any(l != IGNORE for l in e.rejected_labels) for e in train)
