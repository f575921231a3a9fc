"""The held-out split: every 1/f-th document, or, with fewer documents than that needs (one book in a
.txt), the text's tail; a single plain-text file prepares with the default settings."""

import json
import subprocess
import sys

import numpy as np
from tokenizers import Tokenizer

from data.config import SourceConfig
from data.prepare import prepare
from data.reader import PreparedData
from data.split import documents_needed, split_tail

LINES = [f"line {i}: {'to be or not to be ' * (i % 5 + 1)}\n" for i in range(400)]


def test_the_tail_is_the_last_fraction_of_the_text_cut_at_a_line_start():
    texts = ["".join(LINES[:300]), "".join(LINES[300:])]
    train, val = split_tail(texts, 0.05)
    total = sum(map(len, texts))
    assert "".join(t for _, t in train + val) == "".join(texts)  # nothing lost, nothing twice, in order
    assert [i for i, _ in train] == [0, 1] and [i for i, _ in val] == [1]  # the second text is cut
    held = len(val[0][1])
    assert val[0][1].startswith("line ") and texts[1][-held - 1] == "\n"  # at a line start
    assert 0.05 * total <= held < 0.05 * total + max(map(len, LINES))  # moved back by less than one line


def test_whole_texts_go_to_the_tail_before_one_is_cut():
    train, val = split_tail(["a" * 90, "b" * 4, "c" * 6], 0.1)  # 10 characters: the last two texts whole
    assert train == [(0, "a" * 90)] and val == [(1, "b" * 4), (2, "c" * 6)]
    train, val = split_tail(["abcdefghij" * 10], 0.1)  # no line start: cut at the character
    assert train == [(0, ("abcdefghij" * 10)[:90])] and val == [(0, "abcdefghij")]


def test_documents_needed():
    assert documents_needed(0.01) == 100 and documents_needed(0.3) == 4 and documents_needed(0.0) == 0


def test_few_documents_hold_out_the_tail_many_hold_out_documents(make_config, tmp_path):
    book = tmp_path / "book.txt"
    book.write_text("".join(LINES))
    prepared = prepare(make_config(SourceConfig(kind="local", paths=[str(book)])))  # val_fraction 0.1: needs 10
    manifest = prepared.manifest
    assert manifest["held_out"] == "tail" and manifest["splits"]["train"]["documents"] == 1
    tokenizer = Tokenizer.from_file(str(prepared.path / "tokenizer.json"))
    data = PreparedData(prepared.path)
    val_text = tokenizer.decode(np.asarray(data.tokens(data.shards("val")[0])).tolist())
    assert book.read_text().endswith(val_text) and 0.1 * len(book.read_text()) <= len(val_text) < 0.12 * len(book.read_text())

    lines = prepare(make_config(SourceConfig(kind="local", paths=[str(book)], txt_unit="line"), name="lines")).manifest
    assert lines["held_out"] == "documents" and lines["splits"]["val"]["documents"] == 40


def test_one_plain_text_file_prepares_with_the_default_settings(tmp_path):
    """`python -m data source=local source.paths=[book.txt]`: the first thing a new user tries."""
    (tmp_path / "book.txt").write_text("".join(LINES))
    result = subprocess.run([sys.executable, "-m", "data", "source=local", "source.paths=[book.txt]"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "outputs" / "data" / "stdlib" / "manifest.json").read_text())
    assert manifest["held_out"] == "tail" and manifest["splits"]["val"]["tokens"] > 0
    assert manifest["splits"]["train"]["tokens"] > 50 * manifest["splits"]["val"]["tokens"]
    said = [line for line in result.stdout.splitlines() if line.strip().startswith("held out")]
    assert len(said) == 1 and "last 1%" in said[0] and "shards.val_fraction=0.01" in said[0] and "source.txt_unit" in said[0]
