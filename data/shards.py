"""Packed token shards: the on-disk format that data preparation writes and training reads.

A split (`train/`, `val/`) is a list of shards. Shard `00000` is two files:
- `00000.bin`: the documents' tokens back to back (each ending in EOS), raw uint16 or uint32, memory-mappable;
- `00000.docs.npy`: int64 cumulative end offsets of its documents (the document-boundary index).
A document never spans two shards. `manifest.json` beside the splits lists every shard with its counts
and sha256 checksum; it is written last, inside a temporary folder that is renamed when complete.
"""

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, List, Optional

import numpy as np

DTYPES = {"uint16": np.uint16, "uint32": np.uint32}


@dataclass
class ShardInfo:
    tokens_file: str  # relative to the prepared folder
    docs_file: str
    tokens: int
    documents: int
    sha256: str  # of the tokens file


class ShardWriter:
    """Appends documents to `<folder>/<split>/NNNNN.bin`, starting a new shard past `shard_tokens`."""

    def __init__(self, root: Path, split: str, dtype: str, shard_tokens: int):
        self.root, self.split, self.dtype, self.shard_tokens = root, split, DTYPES[dtype], shard_tokens
        (root / split).mkdir(parents=True)
        self.shards: List[ShardInfo] = []
        self.file: Optional[BinaryIO] = None

    def add(self, tokens: np.ndarray) -> None:
        if self.file is not None and self.tokens_in_shard + len(tokens) > self.shard_tokens:
            self.finish_shard()
        if self.file is None:
            name = f"{self.split}/{len(self.shards):05d}"
            self.name, self.file, self.hash = name, open(self.root / f"{name}.bin", "wb"), hashlib.sha256()
            self.tokens_in_shard, self.doc_ends = 0, []
        data = tokens.astype(self.dtype, copy=False).tobytes()
        self.file.write(data)
        self.hash.update(data)
        self.tokens_in_shard += len(tokens)
        self.doc_ends.append(self.tokens_in_shard)

    def finish_shard(self) -> None:
        self.file.close()
        self.file = None
        np.save(self.root / f"{self.name}.docs.npy", np.asarray(self.doc_ends, dtype=np.int64))
        self.shards.append(
            ShardInfo(f"{self.name}.bin", f"{self.name}.docs.npy", self.tokens_in_shard, len(self.doc_ends), self.hash.hexdigest())
        )

    def close(self) -> List[dict]:
        if self.file is not None:
            self.finish_shard()
        return [asdict(s) for s in self.shards]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
