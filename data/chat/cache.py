"""The tokenized cache of SFT windows and DPO pairs: built once, by one process, reused by every rank and restart.

    <root>/<sft|dpo>-<key>/
        meta.json     what was read: counts (conversations or pairs, windows, skipped by reason), the key's inputs
        *.npy         the arrays (int32), read memory-mapped

The key hashes everything the result depends on: the data (local files: path, size and mtime; a Hugging Face
dataset: its name, config, split and files; the embedded set: its code and the Python version), the
row format, the chat format (tokenizer and template), the sequence length, packing, the held-out fraction
and the padding id. A folder under its final name is complete (common/atomic.py's atomic_directory), so a
reader never sees half of one; the process that builds is told so by its caller (rank 0 in train/stages.py),
the others wait for the folder to appear.
"""

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Tuple

from common.atomic import atomic_directory, remove_stale_temporaries
from data.chat import stdlib
from data.chat.rows import ChatSource
from data.errors import DataError
from data.sources import resolve_local_paths

VERSION = 2  # bump when the cached layout or the tokenization rules change
META = "meta.json"


def stamp(path: Path) -> list:
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def source_stamp(source: ChatSource) -> Dict[str, object]:
    """What identifies the rows of a source without reading them."""
    rows = {"kind": source.kind, "format": source.format, "max_rows": source.max_rows}
    if source.kind == "local":
        rows["files"] = [stamp(path) for path in resolve_local_paths(source.paths)]
    elif source.kind == "hf":
        local = [Path(f) for f in source.data_files] + ([Path(source.name)] if source.name and Path(source.name).exists() else [])
        files = [f for path in local for f in ([path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else [])]
        rows.update(name=source.name, config_name=source.config_name, split=source.split,
                    data_files=list(source.data_files), files=[stamp(f) for f in files if f.is_file()])
    else:
        rows.update(code=hashlib.sha256(Path(stdlib.__file__).read_bytes()).hexdigest(), python=sys.version)
    return rows


def cache_folder(root: Path, kind: str, inputs: Dict[str, object]) -> Path:
    text = json.dumps({"version": VERSION, **inputs}, sort_keys=True, default=str)
    return Path(root) / f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def load_or_build(folder: Path, builder: bool, build: Callable[[Path], Dict[str, object]], wait_s: float
                  ) -> Tuple[Dict[str, object], bool]:
    """(meta, reused): the folder's meta.json; a builder without one first builds it with build(tmp) -> meta
    (filling tmp with its arrays), the others wait up to `wait_s` seconds for the builder's."""
    meta = folder / META
    if not meta.is_file() and builder:
        remove_stale_temporaries(folder)
        with atomic_directory(folder) as tmp:
            (tmp / META).write_text(json.dumps(build(tmp), indent=1) + "\n")
        return json.loads(meta.read_text()), False
    waited = time.monotonic()
    while not meta.is_file():
        if time.monotonic() - waited > wait_s:
            raise DataError(f"waited {wait_s:.0f} s for {folder}, which rank 0 tokenizes: is the run folder "
                            "shared by every rank (or data.chat_cache)?")
        time.sleep(0.5)
    return json.loads(meta.read_text()), True
