"""`source.kind=passkey`: synthetic retrieval documents, the same on every run, the probe's text with its answer."""

import re

import pytest

from data.config import SourceConfig
from data.errors import DataError
from data.passkey import FILLER, NEEDLE, QUESTION
from data.sources import SourceStats, read_documents


def documents(**settings):
    return list(read_documents(SourceConfig(kind="passkey", **settings), SourceStats()))


def test_documents_hide_a_key_and_answer_it():
    docs = documents(max_documents=50, filler_lines=[2, 9])
    assert len(docs) == 50 and docs == documents(max_documents=50, filler_lines=[2, 9])  # deterministic
    keys = set()
    for doc in docs:
        key = re.search(r"The pass key is (\d{5})\.", doc).group(1)
        keys.add(key)
        assert doc.count(key) == 3 and doc.endswith(f"{QUESTION} {key}.\n")
        assert 2 <= doc.count(FILLER) <= 9 and NEEDLE.format(key=key) in doc
    assert len(keys) > 45  # keys drawn at random
    depths = [doc.split("The pass key is")[0].count(FILLER) / doc.count(FILLER) for doc in docs]
    assert min(depths) < 0.2 and max(depths) > 0.8  # the needle at every depth


def test_passkey_source_needs_a_count_and_a_range():
    with pytest.raises(DataError, match="set max_documents"):
        documents()
    with pytest.raises(DataError, match=r"filler_lines=\[5, 1\]"):
        documents(max_documents=3, filler_lines=[5, 1])
