"""Tokenize-and-pack throughput on the default corpus: this project vs a `datasets.map` baseline.

    python bench/data_throughput.py [--repeats 3] [--workers 0]

Both sides start from the same documents and the same trained tokenizer and end with the token
stream on disk as uint16 with EOS after each document. The baseline is what most scripts do: a batched
`datasets.Dataset.map` with the fast tokenizer (its Rust thread pool uses every core), then one
concatenation. Ours is `data.prepare` with the tokenizer loaded (no training), including reading the
sources, the validation split, shard files, checksums and the manifest. Prints a table; no asserts.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.config import PrepareConfig, SourceConfig, TokenizerConfig  # noqa: E402
from data.prepare import prepare  # noqa: E402
from data.sources import SourceStats, read_documents  # noqa: E402
from data.tokenizer import train_bpe  # noqa: E402


def baseline(documents, tokenizer_file: str, eos: int, out: Path, num_proc) -> int:
    import datasets
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(tokenizer_file)

    def encode(batch):
        return {"ids": [e.ids + [eos] for e in tokenizer.encode_batch(batch["text"], add_special_tokens=False)]}

    dataset = datasets.Dataset.from_dict({"text": documents})
    encoded = dataset.map(encode, batched=True, batch_size=1000, remove_columns=["text"], num_proc=num_proc)
    tokens = np.concatenate([np.asarray(ids, dtype=np.uint16) for ids in encoded["ids"]])
    tokens.tofile(out / "baseline.bin")
    return len(tokens)


def ours(folder: Path, tokenizer_file: str, workers: int, name: str) -> int:
    config = PrepareConfig(name=name, out_dir=str(folder), source=SourceConfig(kind="stdlib"),
                        tokenizer=TokenizerConfig(path=tokenizer_file), num_workers=workers, progress=False)
    manifest = prepare(config).manifest
    return sum(split["tokens"] for split in manifest["splits"].values())


def timed(fn, repeats):
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return result, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="our tokenizer processes (0: one per core)")
    args = parser.parse_args()

    import datasets

    datasets.disable_progress_bars()
    documents = list(read_documents(SourceConfig(kind="stdlib"), SourceStats()))
    tokenizer = train_bpe(documents, TokenizerConfig(vocab_size=8192))
    eos = tokenizer.token_to_id("<|eos|>")
    megabytes = sum(len(d.encode()) for d in documents) / 1e6
    print(f"corpus: Python standard library, {len(documents)} documents, {megabytes:.1f} MB; "
          f"{os.cpu_count()} CPU cores; median of {args.repeats} runs\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tokenizer.save(str(tmp / "tokenizer.json"))
        run = iter(range(10**6))
        for label, fn in [
            ("datasets.map (batched, 1 proc)", lambda: baseline(documents, str(tmp / "tokenizer.json"), eos, tmp, None)),
            ("datasets.map (batched, num_proc=2)", lambda: baseline(documents, str(tmp / "tokenizer.json"), eos, tmp, 2)),
            ("llm-blocks data.prepare", lambda: ours(tmp, str(tmp / "tokenizer.json"), args.workers, f"run{next(run)}")),
        ]:
            tokens, seconds = timed(fn, args.repeats)
            rows.append((label, tokens, seconds, tokens / seconds))
    best_baseline = max(r[3] for r in rows[:2])
    print(f"| {'method':<36} | {'tokens':>10} | {'seconds':>8} | {'tokens/s':>10} | {'vs best baseline':>16} |")
    print(f"|{'-' * 38}|{'-' * 12}:|{'-' * 9}:|{'-' * 11}:|{'-' * 17}:|")
    for label, tokens, seconds, rate in rows:
        print(f"| {label:<36} | {tokens:>10,} | {seconds:>8.2f} | {rate:>10,.0f} | {rate / best_baseline:>15.2f}x |")


if __name__ == "__main__":
    main()
