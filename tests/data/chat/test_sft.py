"""SFT conversations: every format to messages, bad rows counted by reason, packing invariants, real data sets."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from data.chat import stdlib
from data.chat.rows import ChatSource, Skipped
from data.chat.template import IGNORE, encode_conversation
from data.config import TokenizerConfig
from data.chat.sft import (Conversation, Encoded, best_fit_decreasing, encode_all, load_sft, pack_sft, pad_sft,
                           read_conversations)
from data.errors import DataError
from data.split import is_validation, split_held_out
from data.tokenizer import train_bpe
from tests.shared_data import SHARED_DATA as SHARED

PAD = 0


@pytest.fixture(scope="module")
def tokenizer():
    from pydoc_data.topics import topics

    return train_bpe([topics[n] for n in sorted(topics)][:40], TokenizerConfig(vocab_size=600))


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def test_every_format_becomes_messages(tmp_path):
    system = {"role": "system", "content": "Be brief."}
    rows = [
        {"messages": [system, user("Hi"), assistant("Hello"), user("Bye?"), assistant("Bye")]},
        {"prompt": "2+2?", "completion": "4"},
        {"prompt": [system, user("3+3?")], "completion": [assistant("6")]},
        {"instruction": "Add.", "input": "1 and 2", "output": "3"},
        {"instruction": "Say yes.", "input": "", "output": "yes"},
        {"chosen": "\n\nHuman: Is water wet?\n\nAssistant: Yes.\n\nHuman: Sure?\n\nAssistant: Quite.", "rejected": "x"},
    ]
    expected = [
        rows[0]["messages"],
        [user("2+2?"), assistant("4")],
        [system, user("3+3?"), assistant("6")],
        [user("Add.\n\n1 and 2"), assistant("3")],
        [user("Say yes."), assistant("yes")],
        [user("Is water wet?"), assistant("Yes."), user("Sure?"), assistant("Quite.")],
    ]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    skipped = Skipped()
    got = list(read_conversations(ChatSource(kind="local", paths=[str(path)]), skipped))
    assert [c.messages for c in got] == expected and not skipped.counts
    assert [c.where for c in got][:2] == [f"{path}:1", f"{path}:2"]
    # a forced format reads only its rows
    forced = Skipped()
    alpaca = list(read_conversations(ChatSource(kind="local", paths=[str(path)], format="alpaca"), forced))
    assert [c.messages for c in alpaca] == expected[3:5]
    # the others are counted under their columns
    assert forced.counts == {f"unrecognised row with columns [{columns}]: no format reads them (alpaca)": n
                             for columns, n in (("messages", 1), ("completion, prompt", 2), ("chosen, rejected", 1))}
    # the same file as a JSON list, gzipped, through a glob; and through datasets' json builder
    listed = tmp_path / "list" / "rows.json.gz"
    listed.parent.mkdir()
    listed.write_bytes(gzip.compress(json.dumps(rows).encode()))
    assert [c.messages for c in read_conversations(ChatSource(kind="local", paths=[str(tmp_path / "list/*.gz")]), Skipped())] == expected
    pytest.importorskip("datasets")
    hf = ChatSource(kind="hf", name="json", data_files=[str(write_jsonl(tmp_path / "alpaca.jsonl", rows[3:5]))])
    assert [c.messages for c in read_conversations(hf, Skipped())] == expected[3:5]


def test_bad_rows_are_skipped_and_counted_with_locations(tmp_path, tokenizer):
    rows = [
        {"messages": [user("no answer")]},  # 1: no assistant turn
        {"messages": [user("q"), assistant("  ")]},  # 2: empty message
        "{not json",  # 3
        {"text": "\n\nHuman: only a human turn"},  # 4: detected as HH (a text field with a dialogue), but no reply
        {"messages": [{"role": "robot", "content": "beep"}, assistant("a")]},  # 5: malformed message
        {"prompt": "fine", "completion": "row"},  # 6
        {"weird": 1},  # 7
        {"messages": [user("word " * 200), assistant("late")]},  # 8: prompt longer than seq_len
        {"messages": [user("q"), assistant("long " * 200)]},  # 9: truncated, kept
        {"instruction": "", "input": "", "output": "x"},  # 10: empty message
    ]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    skipped = Skipped()
    conversations = list(read_conversations(ChatSource(kind="local", paths=[str(path)]), skipped))
    assert [c.where for c in conversations] == [f"{path}:{n}" for n in (6, 8, 9)]
    assert skipped.counts == {"no assistant turn": 2, "empty message": 2, "malformed JSON": 1,
                              "unrecognised row with columns [weird]: no format reads them "
                              "(messages, prompt_completion, alpaca, hh, text)": 1, "malformed message": 1}
    assert skipped.examples["empty message"] == [f"{path}:2", f"{path}:10"]
    assert skipped.examples["malformed JSON"] == [f"{path}:3"] and skipped.examples["no assistant turn"] == [f"{path}:1", f"{path}:4"]
    windows = pack_sft(encode_all(tokenizer, conversations), 64, PAD, skipped)
    assert skipped.counts["prompt longer than seq_len"] == 1 and skipped.examples["prompt longer than seq_len"] == [f"{path}:8"]
    assert skipped.counts["truncated to seq_len (kept)"] == 1 and skipped.examples["truncated to seq_len (kept)"] == [f"{path}:9"]
    assert len(windows) == 2  # row 6, then row 9 cut to a full window
    assert f"{path}:8" in skipped.report()


def test_a_source_with_nothing_usable_is_an_error_naming_the_reasons(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "empty.jsonl", [{"messages": [user("q")]}])
    with pytest.raises(DataError, match="no usable conversation.*no assistant turn: 1"):
        load_sft(ChatSource(kind="local", paths=[str(path)]), tokenizer, 64, PAD)
    with pytest.raises(DataError, match="format='sharegpt' is unknown"):
        load_sft(ChatSource(kind="local", paths=[str(path)], format="sharegpt"), tokenizer, 64, PAD)


def fitted_examples(tokenizer, seq_len):
    """The stdlib conversations encoded, as pack_sft will cut them; the first one far too long for a window."""
    conversations = [Conversation(m, w) for m, w in stdlib.conversations()[:300]]
    long = encode_conversation(tokenizer, conversations[1].messages)
    examples = encode_all(tokenizer, conversations)
    examples[0] = Encoded(long[0] * 10, long[1] * 10, "long")  # several turns' worth, longer than a window
    return examples


@pytest.mark.parametrize("seq_len", [48, 128])
def test_packing_invariants(tokenizer, seq_len):
    examples = fitted_examples(tokenizer, seq_len)
    skipped = Skipped()
    windows = pack_sft(examples, seq_len, PAD, skipped)
    assert skipped.examples.get("truncated to seq_len (kept)", [None])[0] == "long"
    kept = [e for e in examples if next(i for i, l in enumerate(e.labels) if l != IGNORE) <= seq_len]
    assert len(kept) == len(examples) - skipped.counts.get("prompt longer than seq_len", 0)
    conversations = [(e.input_ids[: seq_len + 1], e.labels[: seq_len + 1]) for e in kept]  # cut only at the end
    per_window = []  # the conversations found in each window, in order
    for w in windows:
        assert w.tokens.shape == w.labels.shape == w.doc_ids.shape == (seq_len + 1,)
        real = w.labels != IGNORE
        assert (w.labels[real] == w.tokens[real]).all()  # labels are the tokens themselves, aligned
        steps = np.diff(w.doc_ids)
        assert w.doc_ids[0] == 0 and ((steps == 0) | (steps == 1)).all()
        starts = np.flatnonzero(np.diff(w.doc_ids, prepend=-1))
        assert (w.labels[starts] == IGNORE).all()  # no target crosses into the next conversation
        pieces = [(w.tokens[w.doc_ids == d].tolist(), w.labels[w.doc_ids == d].tolist()) for d in range(w.doc_ids.max() + 1)]
        found = [p for p in pieces if p in conversations]
        padding = pieces[len(found):]  # at most one piece after the conversations: PAD with IGNORE
        assert pieces[: len(found)] == found and len(padding) <= 1
        assert all(set(t) == {PAD} and set(l) == {IGNORE} for t, l in padding)
        per_window.append(found)
    # every conversation appears whole, once: none was split across windows
    assert sorted(c for found in per_window for c in found) == sorted(conversations)
    # the windows are best-fit decreasing's bins, as the rule's plain statement makes them
    bins = naive_best_fit_decreasing([len(tokens) for tokens, _ in conversations], seq_len + 1)
    assert per_window == [[conversations[i] for i in items] for items in bins]


def naive_best_fit_decreasing(lengths, capacity):
    """Longest first; each into the bin with the least room that still fits it (the first on a tie), else a new one."""
    bins, rooms = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        fits = [b for b, room in enumerate(rooms) if room >= lengths[i]]
        if fits:
            b = min(fits, key=lambda b: rooms[b])
        else:
            b = len(bins)
            bins.append([])
            rooms.append(capacity)
        bins[b].append(i)
        rooms[b] -= lengths[i]
    return bins


@pytest.mark.parametrize("seed", [0, 1])
def test_best_fit_decreasing_equals_the_naive_rule(seed):
    lengths = np.random.default_rng(seed).integers(1, 258, 500).tolist()  # many ties and exact fits
    bins = best_fit_decreasing(lengths, 257)
    assert bins == naive_best_fit_decreasing(lengths, 257)
    assert all(sum(lengths[i] for i in b) <= 257 for b in bins)
    fewest = max(-(-sum(lengths) // 257), sum(length > 257 // 2 for length in lengths))  # no packing needs fewer
    assert len(bins) <= 11 / 9 * fewest + 6 / 9  # BFD's guarantee (Dosa 2007)


def test_padded_windows_hold_one_conversation(tokenizer):
    examples = fitted_examples(tokenizer, 64)
    windows = pad_sft(examples, 64, PAD, Skipped())
    for w, e in zip(windows, [e for e in examples if next(i for i, l in enumerate(e.labels) if l != IGNORE) <= 64]):
        n = min(len(e.input_ids), 65)
        assert w.tokens[:n].tolist() == e.input_ids[:n] and w.labels[:n].tolist() == e.labels[:n]
        assert (w.tokens[n:] == PAD).all() and (w.labels[n:] == IGNORE).all()
        assert (w.doc_ids[:n] == 0).all() and (w.doc_ids[n:] == 1).all()


def test_held_out_split_is_every_kth_and_deterministic():
    items = list(range(100))
    train, val = split_held_out(items, 0.1)
    assert val == [i for i in items if is_validation(i, 0.1)] == list(range(0, 100, 10))
    assert sorted(train + val) == items and split_held_out(items, 0.1) == (train, val)


def require_shared(name: str) -> Path:
    if not (SHARED / name).is_file():
        pytest.skip(f"{SHARED / name} is absent (real data sets are optional)")
    return SHARED / name


def test_real_alpaca_json(tokenizer):
    data = load_sft(ChatSource(kind="local", paths=[str(require_shared("alpaca_5000.json"))]), tokenizer, 256, PAD)
    assert data.conversations + data.skipped.counts.get("empty message", 0) == 5000
    assert set(data.skipped.counts) <= {"empty message", "prompt longer than seq_len", "truncated to seq_len (kept)"}
    assert data.conversations > 4900 and len(data.val) > 0 and len(data.train) > len(data.val)
    assert all((w.labels != IGNORE).any() for w in data.train)


def test_real_hh_rlhf_jsonl_gz(tokenizer):
    # HH-RLHF holds offensive red-teaming text: only counts are asserted, no sample is printed
    source = ChatSource(kind="local", paths=[str(require_shared("hh_rlhf_harmless_base_test.jsonl.gz"))], format="hh")
    skipped = Skipped()
    conversations = list(read_conversations(source, skipped))
    assert len(conversations) + sum(skipped.counts.values()) == 2312
    assert set(skipped.counts) <= {"empty message"}
    assert all(c.messages[0]["role"] == "user" and c.messages[-1]["role"] == "assistant" for c in conversations)
    # turns alternate, except in a few rows of the data itself (8 of 2,312 have two Human turns in a row)
    repeated = sum(any(m["role"] == c.messages[i + 1]["role"] for i, m in enumerate(c.messages[:-1])) for c in conversations)
    assert repeated < 0.01 * len(conversations)
