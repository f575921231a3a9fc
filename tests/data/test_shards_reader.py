"""Shards hold exactly the documents' tokens; the reader returns exactly those tokens and boundaries."""

import json

import numpy as np
import pytest
from tokenizers import Tokenizer

from data.config import SourceConfig
from data.errors import DataError
from data.prepare import is_validation, prepare
from data.reader import PreparedData, TokenWindows


def expected_streams(prepared, texts, val_fraction):
    """An independent reference: encode each document alone, append EOS, split by the documented rule."""
    tokenizer = Tokenizer.from_file(str(prepared.path / "tokenizer.json"))
    eos = tokenizer.token_to_id("<|eos|>")
    streams = {"train": [], "val": []}
    for ordinal, text in enumerate(texts):
        split = "val" if is_validation(ordinal, val_fraction) else "train"
        streams[split].append(tokenizer.encode(text, add_special_tokens=False).ids + [eos])
    return streams


def prepared_corpus(make_config, jsonl_corpus, **overrides):
    return prepare(make_config(SourceConfig(kind="local", paths=[str(jsonl_corpus)]), **overrides))


def test_validation_rule_spreads_evenly():
    assert [i for i in range(30) if is_validation(i, 0.1)] == [0, 10, 20]
    assert [i for i in range(5) if is_validation(i, 0.5)] == [0, 2, 4]
    assert not any(is_validation(i, 0.0) for i in range(10))


@pytest.mark.parametrize("shard_tokens", [1 << 20, 3000])
def test_reader_returns_exactly_the_written_tokens_and_boundaries(make_config, jsonl_corpus, topic_texts, shard_tokens):
    prepared = prepared_corpus(make_config, jsonl_corpus, **{"shards.shard_tokens": shard_tokens})
    streams = expected_streams(prepared, topic_texts[:20], 0.1)
    data = PreparedData(prepared.path)
    data.verify()
    for split, documents in streams.items():
        shards = data.shards(split)
        assert [d for d in documents] and sum(s["documents"] for s in shards) == len(documents)
        # concatenated shards == concatenated documents; boundary index == document ends
        assert np.concatenate([data.tokens(s) for s in shards]).tolist() == [t for d in documents for t in d]
        ends = np.concatenate([data.doc_ends(s) + sum(x["tokens"] for x in shards[:i]) for i, s in enumerate(shards)])
        assert ends.tolist() == np.cumsum([len(d) for d in documents]).tolist()
    if shard_tokens == 3000:
        assert len(data.shards("train")) > 2
        assert all(s["tokens"] <= 3000 or s["documents"] == 1 for s in data.shards("train"))

    # Windows in order (no shuffle) tile each shard: tokens and document starts are the written ones.
    seq_len = 64
    windows = TokenWindows(prepared.path, "train", seq_len=seq_len, shuffle=False)
    position = 0
    for shard in data.shards("train"):
        tokens, ends = data.tokens(shard), data.doc_ends(shard)
        for start in range(0, shard["tokens"] - seq_len, seq_len):
            window = windows[position]
            position += 1
            assert window.tokens.tolist() == tokens[start : start + seq_len + 1].tolist()
            starts = [0] + [e - start for e in ends if start < e < start + seq_len + 1]
            assert TokenWindows.boundaries(window).tolist() == starts
            assert window.doc_ids[-1] == len(starts) - 1
    assert position == len(windows)


def test_windows_are_a_seeded_permutation_per_epoch(make_config, jsonl_corpus):
    prepared = prepared_corpus(make_config, jsonl_corpus)
    plain = TokenWindows(prepared.path, seq_len=32, shuffle=False)
    a = TokenWindows(prepared.path, seq_len=32, seed=1)
    b = TokenWindows(prepared.path, seq_len=32, seed=1)
    c = TokenWindows(prepared.path, seq_len=32, seed=2)
    n = len(a)
    key = lambda w: w.tokens.tobytes()  # noqa: E731
    all_windows = sorted(key(plain[i]) for i in range(n))
    epoch0 = [key(a[i]) for i in range(n)]
    epoch1 = [key(a[i]) for i in range(n, 2 * n)]
    assert sorted(epoch0) == all_windows and sorted(epoch1) == all_windows  # every window once per epoch
    assert epoch0 != epoch1
    assert epoch0 == [key(b[i]) for i in range(n)]  # same seed, same order
    assert epoch0 != [key(c[i]) for i in range(n)]
    assert a[n + 5].index == n + 5
    # random access by global index doesn't depend on what was read before
    assert key(TokenWindows(prepared.path, seq_len=32, seed=1)[n + 7]) == epoch1[7]


def test_worker_processes_write_identical_shards(make_config, jsonl_corpus):
    one = prepared_corpus(make_config, jsonl_corpus, name="one", num_workers=1, batch_documents=3)
    two = prepared_corpus(make_config, jsonl_corpus, name="two", num_workers=2, batch_documents=3)
    assert one.manifest["splits"] == two.manifest["splits"]


def test_weights_repeat_and_subsample_documents(make_config, tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(f"line number {i}" for i in range(200)))
    source = lambda w: SourceConfig(kind="local", paths=[str(path)], txt_unit="line", weight=w)  # noqa: E731
    counts = {}
    for weight in (1.0, 2.0, 0.5, 2.5):
        config = make_config(source(weight), name=f"w{weight}", **{"shards.val_fraction": 0.0})
        counts[weight] = prepare(config).manifest["splits"]["train"]["documents"]
    assert counts[1.0] == 200 and counts[2.0] == 400
    assert 70 < counts[0.5] < 130 and 470 < counts[2.5] < 530


def test_mixture_adds_sources_in_order(make_config, jsonl_corpus, tmp_path):
    extra = tmp_path / "extra.txt"
    extra.write_text("mixture document")
    config = make_config(
        SourceConfig(kind="local", paths=[str(jsonl_corpus)]),
        mixture=[SourceConfig(kind="local", paths=[str(extra)], weight=3.0)],
        **{"shards.val_fraction": 0.0},
    )
    prepared = prepare(config)
    assert [s["documents"] for s in prepared.manifest["sources"]] == [20, 1]
    assert prepared.manifest["splits"]["train"]["documents"] == 23
    data = PreparedData(prepared.path)
    tokenizer = Tokenizer.from_file(str(data.tokenizer_path))
    shard = data.shards("train")[-1]
    tokens, ends = data.tokens(shard), data.doc_ends(shard)
    last = [tokenizer.decode(tokens[a:b].tolist(), skip_special_tokens=False) for a, b in zip(ends[-4:-1], ends[-3:])]
    assert last == ["mixture document<|eos|>"] * 3


def test_vocab_over_uint16_uses_uint32(make_config, jsonl_corpus, tmp_path):
    from tokenizers import models, pre_tokenizers

    vocab = {"<|eos|>": 0, "<unk>": 1, **{f"w{i}": i + 2 for i in range(70_000)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "big.json"))
    (tmp_path / "big.txt").write_text("w69999 w1 w2\n\nw5")
    config = make_config(SourceConfig(kind="local", paths=[str(tmp_path / "big.txt")], txt_unit="paragraph"),
                         **{"tokenizer.path": str(tmp_path / "big.json"), "shards.val_fraction": 0.0})
    prepared = prepare(config)
    assert prepared.manifest["dtype"] == "uint32"
    data = PreparedData(prepared.path)
    assert data.tokens(data.shards("train")[0]).tolist() == [70001, 3, 4, 0, 7, 0]
    config.shards.dtype = "uint16"
    config.name = "small"
    with pytest.raises(DataError, match="70002 tokens, too many for shards.dtype=uint16; use uint32 or auto"):
        prepare(config)


def test_corrupted_or_truncated_shard_is_detected(make_config, jsonl_corpus):
    prepared = prepared_corpus(make_config, jsonl_corpus)
    shard = prepared.path / PreparedData(prepared.path).shards("train")[0]["tokens_file"]
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="checksum differs"):
        PreparedData(prepared.path).verify()
    found = []  # two ranks check a share each (the tokenizer, train's shard, val's shard...): one finds it
    for part in range(2):
        try:
            PreparedData(prepared.path).verify(part, 2)
        except DataError as error:
            found.append((part, str(error)))
    assert found == [(1, f"{shard}: checksum differs from the manifest; prepare the data again")]
    shard.write_bytes(bytes(data[:-2]))
    with pytest.raises(DataError, match="bytes, the manifest says"):
        PreparedData(prepared.path)


def test_manifest_records_what_training_needs(make_config, jsonl_corpus):
    prepared = prepared_corpus(make_config, jsonl_corpus)
    manifest = json.loads((prepared.path / "manifest.json").read_text())
    assert manifest == prepared.manifest
    assert manifest["dtype"] == "uint16" and manifest["tokenizer"]["vocab_size"] == 400
    assert manifest["tokenizer"]["eos_id"] == 2 and len(manifest["tokenizer"]["sha256"]) == 64
    assert manifest["sources"][0]["documents"] == 20
    assert manifest["splits"]["val"]["documents"] == 2
    assert (prepared.path / "config.yaml").read_text().count("vocab_size: 400") == 1
