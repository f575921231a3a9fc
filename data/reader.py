"""Read prepared shards for training: fixed-length token windows with their document boundaries.

A split is cut into non-overlapping windows of `seq_len + 1` tokens (inputs and shifted targets share
one token), never across a shard boundary. Window `i` of the sample stream is addressed by a global
index: epoch `i // len(windows)`, then a seeded permutation of that epoch. The index is all that
training has to remember, so it can resume on any number of ranks with the next unseen sample.
"""

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Dict, List

import numpy as np

from data.errors import DataError
from data.shards import DTYPES, file_sha256


@dataclass
class Window:
    tokens: np.ndarray  # [seq_len + 1] int64: inputs tokens[:-1], targets tokens[1:]
    doc_ids: np.ndarray  # [seq_len + 1] int32: each token's document, counted from 0 inside the window
    index: int  # the global sample index it was read for


class PreparedData:
    """A folder written by `python -m data`: its manifest, tokenizer and splits."""

    def __init__(self, path: str):
        self.path = Path(path)
        try:
            self.manifest = json.loads((self.path / "manifest.json").read_text())
        except OSError:
            raise DataError(f"{self.path}: no manifest.json; prepare the data first (python -m data ...)") from None
        self.dtype = DTYPES[self.manifest["dtype"]]
        for split in self.manifest["splits"].values():
            for shard in split["shards"]:
                size = (self.path / shard["tokens_file"]).stat().st_size
                if size != shard["tokens"] * np.dtype(self.dtype).itemsize:
                    raise DataError(f"{self.path / shard['tokens_file']}: {size} bytes, the manifest says "
                                    f"{shard['tokens']} tokens; prepare the data again")

    @property
    def tokenizer_path(self) -> Path:
        return self.path / self.manifest["tokenizer"]["file"]

    @property
    def vocab_size(self) -> int:
        return self.manifest["tokenizer"]["vocab_size"]

    @property
    def eos_id(self) -> int:
        return self.manifest["tokenizer"]["eos_id"]

    def shards(self, split: str) -> List[Dict[str, object]]:
        if split not in self.manifest["splits"]:
            raise DataError(f"{self.path}: no split {split!r} (have: {', '.join(self.manifest['splits'])})")
        return self.manifest["splits"][split]["shards"]

    def tokens(self, shard: Dict[str, object]) -> np.ndarray:
        return np.memmap(self.path / shard["tokens_file"], dtype=self.dtype, mode="r")

    def doc_ends(self, shard: Dict[str, object]) -> np.ndarray:
        return np.load(self.path / shard["docs_file"])

    def verify(self, part: int = 0, parts: int = 1) -> None:
        """Recompute the checksums in the manifest (tokenizer and shards): all of them, or every `parts`-th
        file from `part` on, so that `parts` processes (training's ranks) read the folder once between them."""
        expected = [(self.manifest["tokenizer"]["file"], self.manifest["tokenizer"]["sha256"])]
        expected += [(s["tokens_file"], s["sha256"]) for split in self.manifest["splits"] for s in self.shards(split)]
        for file, digest in expected[part::parts]:
            if file_sha256(self.path / file) != digest:
                raise DataError(f"{self.path / file}: checksum differs from the manifest; prepare the data again")


class EpochOrder:
    """Global sample index -> item position: epoch `index // n`, then a seeded permutation of that epoch
    (or the identity without shuffling). The one rule every training stream uses."""

    def __init__(self, n: int, seed: int, shuffle: bool):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self._epoch, self._order = -1, None

    def __call__(self, index: int) -> int:
        epoch, position = divmod(index, self.n)
        if not self.shuffle:
            return position
        if epoch != self._epoch:
            self._order, self._epoch = np.random.default_rng([self.seed, epoch]).permutation(self.n), epoch
        return int(self._order[position])


class TokenWindows:
    """Windows of `seq_len + 1` tokens of one split, deterministic for a seed, addressed by global index."""

    def __init__(self, path: str, split: str = "train", seq_len: int = 512, seed: int = 0, shuffle: bool = True):
        self.data = PreparedData(path)
        self.split, self.seq_len, self.seed, self.shuffle = split, seq_len, seed, shuffle
        self.shard_list = self.data.shards(split)
        per_shard = np.array([max(0, (s["tokens"] - 1) // seq_len) for s in self.shard_list], dtype=np.int64)
        self.first_window = np.concatenate([[0], np.cumsum(per_shard)])  # [shards + 1]
        if self.first_window[-1] == 0:
            raise DataError(f"{path}: the {split} split has no window of {seq_len + 1} tokens; lower the sequence length")
        self.order = EpochOrder(len(self), seed, shuffle)

    def __len__(self) -> int:
        """Windows in one epoch."""
        return int(self.first_window[-1])

    @cached_property
    def _shards(self):
        # opened on first use, so that a DataLoader's worker processes map the files themselves
        return [(self.data.tokens(s), self.data.doc_ends(s)) for s in self.shard_list]

    def locate(self, index: int):
        """Global sample index -> (shard, token offset of the window in that shard)."""
        window = self.order(index)
        shard = int(np.searchsorted(self.first_window, window, side="right") - 1)
        return shard, (window - int(self.first_window[shard])) * self.seq_len

    def __getitem__(self, index: int) -> Window:
        shard, start = self.locate(index)
        tokens, doc_ends = self._shards[shard]
        positions = np.arange(start, start + self.seq_len + 1)
        doc = np.searchsorted(doc_ends, positions, side="right")
        return Window(
            tokens=np.asarray(tokens[start : start + self.seq_len + 1], dtype=np.int64),
            doc_ids=(doc - doc[0]).astype(np.int32),
            index=index,
        )

    @staticmethod
    def boundaries(window: Window) -> np.ndarray:
        """Offsets inside the window where a document starts (always 0 first)."""
        return np.flatnonzero(np.diff(window.doc_ids, prepend=-1))
