"""The tokenized cache: built once, reused without tokenizing, keyed by what the result depends on; rank 0 builds
while the others wait; large sets tokenize in worker processes with the same result."""

import json
import os
import threading

import numpy as np
import pytest

from data.chat import sft as sft_module
from data.chat import stdlib
from data.chat.formats import Conversation
from data.chat.preferences import load_pairs
from data.chat.rows import ChatSource
from data.chat.sft import encode_all, load_sft
from data.chat.workers import PARALLEL_FROM
from data.config import TokenizerConfig
from data.errors import DataError
from data.tokenizer import train_bpe

PAD = 0


@pytest.fixture(scope="module")
def tokenizer():
    from pydoc_data.topics import topics

    return train_bpe([topics[n] for n in sorted(topics)][:40], TokenizerConfig(vocab_size=600))


def conversations_file(path, n=60):
    rows = [{"messages": [{"role": "user", "content": f"question {i}?"}, {"role": "assistant", "content": f"answer {i}."}]}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ChatSource(kind="local", paths=[str(path)])


def windows(data):
    return [(w.tokens.tolist(), w.labels.tolist(), w.doc_ids.tolist()) for w in (data[i] for i in range(len(data)))]


def test_a_second_load_reuses_the_cache_without_tokenizing(tmp_path, tokenizer, monkeypatch):
    source = conversations_file(tmp_path / "chat.jsonl")
    direct = load_sft(source, tokenizer, 64, PAD)
    first = load_sft(source, tokenizer, 64, PAD, cache=tmp_path / "cache")
    assert not first.reused and first.cache.parent == tmp_path / "cache" and first.cache.name.startswith("sft-")
    assert windows(first.train) == windows(direct.train) and windows(first.val) == windows(direct.val)
    assert first.conversations == direct.conversations == 60
    built = (first.cache / "meta.json").stat().st_mtime_ns

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(sft_module, "build_sft", no_tokenizing)
    monkeypatch.setattr(sft_module, "encode_one", no_tokenizing)
    second = load_sft(source, tokenizer, 64, PAD, cache=tmp_path / "cache")
    assert second.reused and second.cache == first.cache and (second.cache / "meta.json").stat().st_mtime_ns == built
    assert windows(second.train) == windows(direct.train) and second.conversations == 60


def test_the_key_follows_the_data_and_the_lengths(tmp_path, tokenizer):
    source = conversations_file(tmp_path / "chat.jsonl")
    cache = tmp_path / "cache"
    base = load_sft(source, tokenizer, 64, PAD, cache=cache).cache
    assert load_sft(source, tokenizer, 48, PAD, cache=cache).cache != base
    assert load_sft(source, tokenizer, 64, PAD, pack=False, cache=cache).cache != base
    assert load_sft(source, tokenizer, 64, PAD, val_fraction=0.1, cache=cache).cache != base
    conversations_file(tmp_path / "chat.jsonl", n=61)  # the data changed: size and mtime
    changed = load_sft(source, tokenizer, 64, PAD, cache=cache)
    assert changed.cache != base and not changed.reused and changed.conversations == 61


def test_ranks_that_do_not_build_wait_for_the_builder(tmp_path, tokenizer):
    source = conversations_file(tmp_path / "chat.jsonl")
    with pytest.raises(DataError, match="waited 1 s for .* which rank 0 tokenizes"):
        load_sft(source, tokenizer, 64, PAD, cache=tmp_path / "cache", builder=False, wait_s=1)
    waiting = {}
    follower = threading.Thread(target=lambda: waiting.update(data=load_sft(
        source, tokenizer, 64, PAD, cache=tmp_path / "cache", builder=False, wait_s=60)))
    follower.start()
    built = load_sft(source, tokenizer, 64, PAD, cache=tmp_path / "cache")
    follower.join()
    assert waiting["data"].cache == built.cache and windows(waiting["data"].train) == windows(built.train)


def test_pairs_are_cached_alike(tmp_path, tokenizer):
    rows = [{"prompt": f"q{i}?", "chosen": f"yes {i}", "rejected": f"no {i}, never"} for i in range(40)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = ChatSource(kind="local", paths=[str(path)])
    direct = load_pairs(source, tokenizer, 64)
    first, second = (load_pairs(source, tokenizer, 64, cache=tmp_path / "cache") for _ in range(2))
    assert not first.reused and second.reused and second.cache.name.startswith("dpo-")
    sides = lambda data: [(p.chosen_ids, p.chosen_labels, p.rejected_ids, p.rejected_labels)  # noqa: E731
                          for p in (data[i] for i in range(len(data)))]
    assert sides(second.train) == sides(direct.train) and sides(second.val) == sides(direct.val) != []
    assert second.pairs == direct.pairs == 40


@pytest.mark.slow  # ~17 s on 2 loaded cores: 5,000 conversations tokenized twice, two spawned workers
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores")
def test_worker_processes_tokenize_as_one_process(tokenizer):
    questions = [messages for messages, _ in stdlib.conversations()]
    conversations = [Conversation(questions[i % len(questions)], f"row {i}") for i in range(PARALLEL_FROM)]
    serial, parallel = encode_all(tokenizer, conversations), encode_all(tokenizer, conversations, workers=2)
    assert [(e.input_ids, e.labels, e.where) for e in parallel] == [(e.input_ids, e.labels, e.where) for e in serial]
    assert np.mean([len(e.input_ids) for e in serial]) > 10


def test_cached_pairs_read_back_as_a_sequence():
    """Iteration (list(), the precomputed reference's walk over every pair) ends at the last pair."""
    from data.chat.preferences import EncodedPair, PairArrays

    pairs = [EncodedPair([1, 2, 3], [-100, 2, 3], [1, 4], [-100, 4], "pair 0"),
             EncodedPair([5], [5], [6, 7, 8, 9], [-100, -100, 8, 9], "pair 1")]
    arrays = PairArrays.of(pairs)
    assert list(arrays) == pairs and len(arrays) == 2
    with pytest.raises(IndexError):
        arrays[2]
