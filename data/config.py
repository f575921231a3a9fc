"""Typed configuration of the data-preparation stage (`python -m data`).

The dataclasses are registered in Hydra's ConfigStore, so every override is checked against them:
a misspelled key (`tokenizer.vocab_sise=...`) is an error, not a silently ignored value. YAML presets
for the source live in `configs/source/`; the primary config is `configs/data.yaml`.
"""

from dataclasses import dataclass, field
from typing import List, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class SourceConfig:
    """Where documents come from; `kind` picks the reader (see data/sources.py)."""

    kind: str = "stdlib"  # stdlib | local | hf | passkey
    # local: files, globs or directories of .txt, .jsonl, .json, .parquet (optionally .gz for text formats)
    paths: List[str] = field(default_factory=list)
    text_field: str = "text"  # field holding the text in json/jsonl/parquet rows and HF datasets
    txt_unit: str = "file"  # .txt: what one document is: file | paragraph (separated by a blank line) | line
    skip_bad_lines: bool = False  # jsonl: count and report malformed lines instead of stopping
    # hf: any dataset `datasets.load_dataset` understands: a hub name, a local dataset folder, or a
    # builder name (json, parquet, text, csv) with `data_files`
    name: Optional[str] = None
    config_name: Optional[str] = None  # hf: the dataset's configuration (subset), e.g. sample-10BT
    data_files: List[str] = field(default_factory=list)  # hf: files for a builder name (json, parquet, text, csv)
    split: str = "train"  # hf: the split to read
    streaming: bool = False  # hf: read as it downloads, without a local copy of the whole dataset
    # stdlib: the Python standard library's documentation topics and source modules (ships with Python)
    include_topics: bool = True  # stdlib: the documentation topics (pydoc_data)
    include_modules: bool = True  # stdlib: also the source modules (else the documentation topics only)
    # passkey: synthetic retrieval documents (data/passkey.py), as many as max_documents
    filler_lines: List[int] = field(default_factory=lambda: [0, 27])  # passkey: [min, max] filler lines per document (~35 tokens each)
    # every source
    weight: float = 1.0  # each document appears floor(w) times, plus once more with probability frac(w)
    max_documents: Optional[int] = None  # take at most this many documents (before weighting)


@dataclass
class TokenizerConfig:
    """Train a byte-level BPE (path=None) or load an existing tokenizer."""

    path: Optional[str] = None  # a tokenizer.json, or a Hugging Face tokenizer folder holding one
    vocab_size: int = 8192  # trained BPE: tokens, the special tokens included
    min_frequency: int = 2  # trained BPE: a merge needs a pair seen at least this often
    train_max_bytes: int = 200_000_000  # text used to train the BPE: the first documents up to this size
    eos_token: Optional[str] = None  # loaded tokenizers: the end-of-document token, when its config doesn't say


@dataclass
class ShardConfig:
    shard_tokens: int = 1 << 26  # tokens per shard file (whole documents; a longer document gets a shard of its own)
    # fraction of documents held out for validation, spread evenly; with fewer than 1/val_fraction
    # documents (one book in a .txt), the last val_fraction of the text instead
    val_fraction: float = 0.01
    dtype: str = "auto"  # auto (uint16 when the vocab fits, else uint32) | uint16 | uint32
    add_bos: bool = False  # also put BOS before each document (EOS always ends one)


@dataclass
class PrepareConfig:
    name: str = "stdlib"  # the output's name: the output is out_dir/name, the same for every rank and restart
    out_dir: str = "outputs/data"  # where prepared folders go
    source: SourceConfig = field(default_factory=SourceConfig)
    mixture: List[SourceConfig] = field(default_factory=list)  # more weighted sources, after `source`
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    num_workers: int = 0  # tokenizer processes; 0: one per CPU core
    batch_documents: int = 64  # documents per task sent to a tokenizer process
    seed: int = 0  # the draws of fractional source weights
    progress: bool = True  # a progress bar while tokenizing


ConfigStore.instance().store(name="data_schema", node=PrepareConfig)
