"""Tokenizer: trained byte-level BPE round-trips real text; saved folders load here and in transformers."""

import json

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from data.config import SourceConfig, TokenizerConfig
from data.errors import DataError
from data.prepare import prepare
from data.tokenizer import SPECIAL_TOKENS, load_tokenizer, special_ids, train_bpe


def test_roundtrip_on_real_text(topic_texts):
    tokenizer = train_bpe(topic_texts[:40], TokenizerConfig(vocab_size=1000))
    assert tokenizer.get_vocab_size() == 1000
    held_out = topic_texts[40:] + ["naïve café — “quotes”, 日本語, emoji 🐍\ttabs\r\nand  double  spaces "]
    for text in held_out:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert tokenizer.decode(ids, skip_special_tokens=False) == text
    # merges were learned: real text compresses well below one token per byte
    total = sum(len(tokenizer.encode(t).ids) for t in held_out)
    assert total < 0.5 * sum(len(t.encode()) for t in held_out)


def test_special_tokens_are_reserved_single_tokens(topic_texts):
    tokenizer = train_bpe(topic_texts[:10], TokenizerConfig(vocab_size=400))
    for index, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.token_to_id(token) == index
        assert tokenizer.encode(f"a{token}b").ids.count(index) == 1
    ids = special_ids(tokenizer, {}, None)
    assert (ids.pad, ids.bos, ids.eos) == (0, 1, 2)


def test_saved_folder_loads_back_and_in_transformers(make_config, topic_texts, tmp_path):
    transformers = pytest.importorskip("transformers")
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in topic_texts[:20]))
    first = prepare(make_config(SourceConfig(kind="local", paths=[str(path)])))
    text = topic_texts[30]
    ours = Tokenizer.from_file(str(first.path / "tokenizer.json")).encode(text).ids
    hf = transformers.AutoTokenizer.from_pretrained(first.path)
    assert hf(text, add_special_tokens=False)["input_ids"] == ours
    assert (hf.eos_token, hf.bos_token, hf.pad_token) == ("<|eos|>", "<|bos|>", "<|pad|>")

    # Loading the saved folder (a Hugging Face tokenizer folder) instead of training gives the same shards.
    again = prepare(make_config(SourceConfig(kind="local", paths=[str(path)]), name="loaded",
                                **{"tokenizer.path": str(first.path)}))
    assert again.manifest["tokenizer"]["trained"] is False
    assert again.manifest["tokenizer"]["sha256"] == first.manifest["tokenizer"]["sha256"]
    assert again.manifest["splits"] == first.manifest["splits"]
    # and a bare tokenizer.json file works too
    assert load_tokenizer(str(first.path / "tokenizer.json")).encode(text).ids == ours


def test_loaded_tokenizer_eos_from_its_config_or_override(tmp_path):
    vocab = {"</s>": 0, "<x>": 1, "hello": 2}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<x>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    assert special_ids(tokenizer, {}, None).eos == 0  # a well-known EOS name
    assert special_ids(tokenizer, {"eos_token": {"content": "<x>"}}, None).eos == 1
    assert special_ids(tokenizer, {"eos_token": "</s>"}, "hello").eos == 2
    with pytest.raises(DataError, match="no end-of-document token '<end>'; set tokenizer.eos_token"):
        special_ids(tokenizer, {"eos_token": "<end>"}, None)


def test_missing_tokenizer_file(tmp_path):
    with pytest.raises(DataError, match="no tokenizer.json there"):
        load_tokenizer(str(tmp_path))
