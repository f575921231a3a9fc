"""The data-preparation stage: documents -> tokenizer -> packed token shards + manifest.

`prepare(config)` is the whole stage; `python -m data` is its Hydra command. The output folder is
`out_dir/name`: the same for every rank and restart. It is built in a hidden temporary folder and
renamed into place only when complete, so a failed or killed run leaves nothing that looks finished.
Re-running an unchanged config (same settings, same input files) does nothing and says so.
"""

import hashlib
import itertools
import json
import multiprocessing
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
from omegaconf import OmegaConf
from tqdm import tqdm

from common.atomic import atomic_directory, remove_stale_temporaries
from common.processes import exit_with_parent
from data import sources
from data.config import PrepareConfig, SourceConfig
from data.errors import DataError
from data.shards import DTYPES, ShardWriter, file_sha256
from data.split import documents_needed, is_validation, split_tail
from data.tokenizer import SpecialIds, hf_tokenizer_config, load_tokenizer, save_tokenizer, special_ids, train_bpe

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass
class Prepared:
    path: Path  # the prepared folder: manifest.json, tokenizer.json, train/, val/
    manifest: Dict[str, object]
    reused: bool  # True when an identical earlier run's output was kept


def output_dir(config: PrepareConfig) -> Path:
    return Path(config.out_dir) / config.name


def all_sources(config: PrepareConfig) -> List[SourceConfig]:
    return [config.source, *config.mixture]


def describe(source: SourceConfig) -> str:
    detail = {"stdlib": "", "local": f" paths={list(source.paths)}", "hf": f" name={source.name}"}.get(source.kind, "")
    return f"source kind={source.kind}{detail}"


def config_fingerprint(config: PrepareConfig) -> str:
    """A hash of everything the output depends on; settings that only change speed or display are left out."""
    settings = asdict(config)
    for key in ("name", "out_dir", "num_workers", "batch_documents", "progress"):
        settings.pop(key)
    inputs = [sources.fingerprint(s) for s in all_sources(config)]
    if config.tokenizer.path:
        inputs.append({"tokenizer": file_sha256(tokenizer_file(config.tokenizer.path))})
    blob = json.dumps({"format": FORMAT_VERSION, "settings": settings, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def tokenizer_file(path: str) -> Path:
    return Path(path) / "tokenizer.json" if Path(path).is_dir() else Path(path)


def read_manifest(folder: Path) -> Optional[Dict[str, object]]:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise DataError(f"out_dir={folder}: cannot write there ({error.strerror}); set out_dir=<a writable folder>") from None


# --- documents, split and weighted ---------------------------------------------------------------


def weighted_documents(config: PrepareConfig, stats: List[sources.SourceStats]) -> Iterator[Tuple[str, int]]:
    """(text, copies) for every document of every source, in a fixed order."""
    for index, source in enumerate(all_sources(config)):
        rng = np.random.default_rng([config.seed, index])
        whole, fraction = divmod(source.weight, 1.0)
        for text in sources.read_documents(source, stats[index]):
            yield text, int(whole) + int(rng.random() < fraction)
        if stats[index].documents == 0:
            raise DataError(f"{describe(source)} produced no documents (all {stats[index].empty_documents} were empty)"
                            if stats[index].empty_documents else f"{describe(source)} produced no documents")


def labelled_documents(config: PrepareConfig, stats: List[sources.SourceStats]) -> Iterator[Tuple[str, str, int]]:
    """(text, split, copies) for every document: every 1/val_fraction-th held out (data/split.py), or, when
    the sources hold fewer documents than that needs (one book in a .txt), the tail of their text."""
    fraction = config.shards.val_fraction
    stream, head = weighted_documents(config, stats), []
    for item in stream:  # the first documents_needed, to know whether there are that many
        head.append(item)
        if len(head) >= documents_needed(fraction):
            break
    if len(head) < documents_needed(fraction):
        train, val = split_tail([text for text, _ in head], fraction)
        for split, pieces in (("train", train), ("val", val)):
            yield from ((text, split, head[index][1]) for index, text in pieces)
        return
    for ordinal, (text, copies) in enumerate(itertools.chain(head, stream)):
        yield text, "val" if is_validation(ordinal, fraction) else "train", copies


def batches(items: Iterator[Tuple[str, str, int]], size: int) -> Iterator[Tuple[List[str], List[Tuple[str, int]]]]:
    texts, labels = [], []
    for text, split, copies in items:
        texts.append(text)
        labels.append((split, copies))
        if len(texts) == size:
            yield texts, labels
            texts, labels = [], []
    if texts:
        yield texts, labels


# --- tokenizer worker processes --------------------------------------------------------------------

_worker_tokenizer = None
_worker_ids: Optional[SpecialIds] = None


def init_worker(tokenizer_json: str, ids: SpecialIds, add_bos: bool) -> None:
    from tokenizers import Tokenizer

    if multiprocessing.parent_process() is not None:  # a pool worker: it would wait for work forever
        exit_with_parent(multiprocessing.parent_process().pid, "tokenizer worker")

    global _worker_tokenizer, _worker_ids, _worker_add_bos
    _worker_tokenizer, _worker_ids, _worker_add_bos = Tokenizer.from_str(tokenizer_json), ids, add_bos


def encode_batch(task: Tuple[List[str], list]) -> Tuple[np.ndarray, np.ndarray, list]:
    """Tokenize a batch of documents; returns (all tokens [N] uint32 with EOS after each, lengths, labels)."""
    texts, labels = task
    prefix, suffix = ([_worker_ids.bos] if _worker_add_bos else []), [_worker_ids.eos]
    ids = [prefix + e.ids + suffix for e in _worker_tokenizer.encode_batch(texts, add_special_tokens=False)]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    return np.fromiter(itertools.chain.from_iterable(ids), dtype=np.uint32, count=int(lengths.sum())), lengths, labels


def encoded_batches(config: PrepareConfig, tokenizer_json: str, ids: SpecialIds, work: Iterator) -> Iterator:
    workers = config.num_workers or os.cpu_count() or 1
    args = (tokenizer_json, ids, config.shards.add_bos)
    if workers == 1:
        init_worker(*args)
        yield from map(encode_batch, work)
        return
    # spawn, not fork: the parent's tokenizer may already run Rust threads, which fork does not copy safely.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker process; the processes are the parallelism
    with multiprocessing.get_context("spawn").Pool(workers, initializer=init_worker, initargs=args) as pool:
        yield from pool.imap(encode_batch, work)


# --- the stage ---------------------------------------------------------------------------------------


def prepare(config: PrepareConfig) -> Prepared:
    out = output_dir(config)
    check_writable(out.parent)
    fingerprint = config_fingerprint(config)
    manifest = read_manifest(out)
    if manifest and manifest.get("fingerprint") == fingerprint:
        return Prepared(out, manifest, reused=True)
    remove_stale_temporaries(out)
    with atomic_directory(out) as work:  # a changed config replaces the earlier output only once complete
        manifest = build(config, work, fingerprint)
    return Prepared(out, manifest, reused=False)


def build(config: PrepareConfig, work: Path, fingerprint: str) -> Dict[str, object]:
    started = time.time()
    if config.tokenizer.path:
        tokenizer = load_tokenizer(config.tokenizer.path)
    else:
        texts = (t for s in all_sources(config) for t in sources.read_documents(s, sources.SourceStats()))
        tokenizer = train_bpe(texts, config.tokenizer)
    hf_config = hf_tokenizer_config(config.tokenizer.path)
    ids = special_ids(tokenizer, hf_config, config.tokenizer.eos_token)
    save_tokenizer(tokenizer, ids, hf_config, config.tokenizer.path, work)
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    dtype = config.shards.dtype
    if dtype == "auto":
        dtype = "uint16" if vocab_size <= 1 << 16 else "uint32"
    if dtype not in DTYPES:
        raise DataError(f"shards.dtype={dtype!r} is unknown; use auto, uint16 or uint32")
    if vocab_size > np.iinfo(DTYPES[dtype]).max + 1:
        raise DataError(f"the vocabulary has {vocab_size} tokens, too many for shards.dtype={dtype}; use uint32 or auto")

    writers = {split: ShardWriter(work, split, dtype, config.shards.shard_tokens) for split in ("train", "val")}
    stats = [sources.SourceStats() for _ in all_sources(config)]
    work_items = batches(labelled_documents(config, stats), config.batch_documents)
    progress = tqdm(unit=" docs", desc="tokenizing", disable=not config.progress, mininterval=1.0)
    for tokens, lengths, labels in encoded_batches(config, tokenizer.to_str(), ids, work_items):
        for document, (split, copies) in zip(np.split(tokens, np.cumsum(lengths)[:-1]), labels):
            for _ in range(copies):
                writers[split].add(document)
        progress.update(len(labels))
    progress.close()

    splits = {}
    for split, writer in writers.items():
        shards = writer.close()
        splits[split] = {"tokens": sum(s["tokens"] for s in shards), "documents": sum(s["documents"] for s in shards), "shards": shards}
    documents = sum(s.documents for s in stats)
    if splits["train"]["tokens"] == 0:
        raise DataError(
            f"no document is left for training ({documents} in all, every one held out or weighted to zero); lower "
            "shards.val_fraction, split .txt files into more documents (source.txt_unit=paragraph or line), raise "
            "the weights, or add data"
        )
    manifest = {
        "format": FORMAT_VERSION,
        "name": config.name,
        "fingerprint": fingerprint,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.time() - started, 2),
        "sources": [
            {"kind": s.kind, "weight": s.weight, **asdict(st), "fingerprint": sources.fingerprint(s)}
            for s, st in zip(all_sources(config), stats)
        ],
        "tokenizer": {
            "file": "tokenizer.json",
            "sha256": file_sha256(work / "tokenizer.json"),
            "trained": config.tokenizer.path is None,
            "vocab_size": vocab_size,
            "eos_id": ids.eos,
            "bos_id": ids.bos,
            "pad_id": ids.pad,
        },
        "dtype": dtype,
        # how validation was held out: every 1/val_fraction-th document, or the text's tail (too few documents)
        "held_out": "documents" if documents >= documents_needed(config.shards.val_fraction) else "tail",
        "splits": splits,
    }
    (work / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(config)))
    (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
