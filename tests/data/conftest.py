import json
from pathlib import Path

import pytest

from data.config import PrepareConfig, ShardConfig, SourceConfig, TokenizerConfig

# Real prose and code for small corpora: Python's documentation topics, on every machine.
from pydoc_data.topics import topics

TOPIC_TEXTS = [topics[name] for name in sorted(topics)]


@pytest.fixture
def topic_texts():
    return TOPIC_TEXTS


@pytest.fixture
def make_config(tmp_path):
    return lambda source, **overrides: small_config(tmp_path, source, **overrides)


def small_config(tmp_path: Path, source: SourceConfig, **overrides) -> PrepareConfig:
    """A fast config: small vocab, tokenizing in-process, no progress bar, output under tmp_path."""
    config = PrepareConfig(
        name="test",
        out_dir=str(tmp_path / "out"),
        source=source,
        tokenizer=TokenizerConfig(vocab_size=400),
        shards=ShardConfig(val_fraction=0.1),
        num_workers=1,
        progress=False,
    )
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, leaf, value)
    return config


@pytest.fixture
def jsonl_corpus(tmp_path) -> Path:
    """Twenty documentation topics as a JSONL file with a `text` field."""
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(TOPIC_TEXTS[:20])))
    return path
