"""Documents from the kinds of source: the embedded standard library, local files, HF datasets, and
synthetic passkey documents (data/passkey.py).

Each reader yields plain strings, one per document, in a deterministic order. Bad input raises
DataError naming the file and line; with `skip_bad_lines` a malformed JSONL line is counted instead.
"""

import functools
import glob
import gzip
import io
import json
import os
import re
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Tuple

from data.config import SourceConfig
from data.errors import DataError
from data.passkey import passkey_documents

LOCAL_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")


@dataclass
class SourceStats:
    """What a reader passed over, reported in the manifest and on the console."""

    documents: int = 0
    empty_documents: int = 0
    skipped_lines: int = 0


# --- the embedded default: Python's own documentation and source ---------------------------------


@functools.lru_cache(maxsize=1)
def stdlib_module_files() -> Tuple[Path, ...]:
    """The standard library's .py files, without tests and the IDLE/2to3 tools: ~11 MB on CPython 3.11."""
    skip = {"site-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"}
    files = []
    for folder, subfolders, names in os.walk(sysconfig.get_paths()["stdlib"]):
        subfolders[:] = [d for d in subfolders if d not in skip]  # prune: site-packages alone can hold 40k files
        files += [Path(folder, n) for n in names if n.endswith(".py")]
    return tuple(sorted(files))


def stdlib_documents(source: SourceConfig, stats: SourceStats) -> Iterator[str]:
    if source.include_topics:
        from pydoc_data.topics import topics

        for name in sorted(topics):
            yield topics[name]
    if source.include_modules:
        for path in stdlib_module_files():
            yield path.read_text(encoding="utf-8", errors="replace")


# --- local files -----------------------------------------------------------------------------------


def resolve_local_paths(paths: List[str]) -> List[Path]:
    """Expand files, globs and directories (recursively) into a sorted list of data files."""
    if not paths:
        raise DataError("source.paths is empty: give files, globs or directories, e.g. source.paths=[corpus/*.jsonl]")
    files: List[Path] = []
    for entry in paths:
        matches = sorted(glob.glob(os.path.expanduser(entry), recursive=True)) if glob.has_magic(entry) else [entry]
        if not matches:
            raise DataError(f"source.paths: the pattern {entry!r} matches no file")
        for match in map(Path, matches):
            if match.is_dir():
                found = sorted(p for p in match.rglob("*") if p.is_file() and data_suffix(p) in LOCAL_SUFFIXES)
                if not found:
                    raise DataError(f"source.paths: the directory {match} holds no {'/'.join(LOCAL_SUFFIXES)} file")
                files.extend(found)
            elif match.is_file():
                if data_suffix(match) not in LOCAL_SUFFIXES:
                    raise DataError(f"source.paths: {match} is not one of {', '.join(LOCAL_SUFFIXES)} (or .gz of a text format)")
                files.append(match)
            else:
                raise DataError(f"source.paths: no such file or directory: {match}")
    return files


def data_suffix(path: Path) -> str:
    """The format suffix, looking through a trailing .gz: corpus.jsonl.gz -> .jsonl."""
    suffixes = path.suffixes
    if suffixes and suffixes[-1] == ".gz":
        return suffixes[-2] if len(suffixes) > 1 else ""
    return path.suffix


def open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, "r", encoding="utf-8")


def text_of(row: object, field: str, where: str) -> str:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object with a {field!r} field, got {type(row).__name__}")
    if field not in row:
        keys = ", ".join(sorted(map(str, row))[:10])
        raise DataError(f"{where}: no field {field!r} (fields: {keys}); set source.text_field=<one of them>")
    value = row[field]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {field!r} is {type(value).__name__}, not text")
    return value


def jsonl_documents(path: Path, source: SourceConfig, stats: SourceStats) -> Iterator[str]:
    with open_text(path) as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                if source.skip_bad_lines:
                    stats.skipped_lines += 1
                    continue
                raise DataError(
                    f"{path}:{number}: malformed JSON ({error.msg}); fix the line or set source.skip_bad_lines=true"
                ) from None
            yield text_of(row, source.text_field, f"{path}:{number}")


def json_documents(path: Path, source: SourceConfig, stats: SourceStats) -> Iterator[str]:
    """A .json file is either one JSON list of objects or, as in `datasets`, JSON lines."""
    with open_text(path) as f:
        head = f.read(4096).lstrip()
    if not head.startswith("["):
        yield from jsonl_documents(path, source, stats)
        return
    with open_text(path) as f:
        try:
            rows = json.load(f)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{error.lineno}: malformed JSON ({error.msg})") from None
    for index, row in enumerate(rows):
        yield text_of(row, source.text_field, f"{path}: item {index}")


def parquet_documents(path: Path, source: SourceConfig, stats: SourceStats) -> Iterator[str]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    if source.text_field not in parquet.schema_arrow.names:
        names = ", ".join(parquet.schema_arrow.names[:10])
        raise DataError(f"{path}: no column {source.text_field!r} (columns: {names}); set source.text_field=<one of them>")
    for batch in parquet.iter_batches(columns=[source.text_field], batch_size=1024):
        for value in batch.column(0).to_pylist():
            yield value or ""


TXT_SPLITTERS: Dict[str, Callable[[str], List[str]]] = {
    "file": lambda text: [text],
    "paragraph": lambda text: re.split(r"\n[ \t]*\n", text),
    "line": str.splitlines,
}


def txt_documents(path: Path, source: SourceConfig, stats: SourceStats) -> Iterator[str]:
    if source.txt_unit not in TXT_SPLITTERS:
        raise DataError(f"source.txt_unit={source.txt_unit!r} is unknown; use one of: {', '.join(TXT_SPLITTERS)}")
    with open_text(path) as f:
        yield from TXT_SPLITTERS[source.txt_unit](f.read())


FILE_READERS: Dict[str, Callable[[Path, SourceConfig, SourceStats], Iterator[str]]] = {
    ".txt": txt_documents,
    ".jsonl": jsonl_documents,
    ".json": json_documents,
    ".parquet": parquet_documents,
}


def local_documents(source: SourceConfig, stats: SourceStats) -> Iterator[str]:
    for path in resolve_local_paths(source.paths):
        try:
            yield from FILE_READERS[data_suffix(path)](path, source, stats)
        except UnicodeDecodeError as error:
            raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


# --- Hugging Face datasets -------------------------------------------------------------------------


def hf_documents(source: SourceConfig, stats: SourceStats) -> Iterator[str]:
    if not source.name:
        raise DataError("source.name is empty: name a dataset (hub id, local folder, or json/parquet/text with source.data_files)")
    import datasets

    try:
        dataset = datasets.load_dataset(
            source.name,
            source.config_name,
            data_files=list(source.data_files) or None,
            split=source.split,
            streaming=source.streaming,
        )
    except Exception as error:  # datasets raises many types; the message is what the user needs
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"source.name={source.name!r}: datasets.load_dataset failed: {first_line}") from None
    columns = dataset.column_names
    if columns is not None and source.text_field not in columns:
        raise DataError(
            f"source.name={source.name!r}: no column {source.text_field!r} (columns: {', '.join(columns[:10])}); "
            "set source.text_field=<one of them>"
        )
    for index, row in enumerate(dataset):
        yield text_of(row, source.text_field, f"{source.name} row {index}")


READERS: Dict[str, Callable[[SourceConfig, SourceStats], Iterator[str]]] = {
    "stdlib": stdlib_documents,
    "local": local_documents,
    "hf": hf_documents,
    "passkey": lambda source, stats: passkey_documents(source),
}


def read_documents(source: SourceConfig, stats: SourceStats) -> Iterator[str]:
    """Non-empty documents of one source, at most `max_documents`, counted into `stats`."""
    if source.kind not in READERS:
        raise DataError(f"source.kind={source.kind!r} is unknown; use one of: {', '.join(READERS)}")
    if source.weight < 0:
        raise DataError(f"source.weight={source.weight} is negative")
    for text in READERS[source.kind](source, stats):
        if source.max_documents is not None and stats.documents >= source.max_documents:
            return
        if not text.strip():
            stats.empty_documents += 1
            continue
        stats.documents += 1
        yield text


def fingerprint(source: SourceConfig) -> Dict[str, object]:
    """What the output depends on beyond the config: the files' sizes and times, Python's version."""
    if source.kind == "stdlib":
        files = stdlib_module_files() if source.include_modules else []
        return {"python": sys.version.split()[0], "files": len(files), "bytes": sum(f.stat().st_size for f in files)}
    if source.kind == "local":
        return {"files": [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in resolve_local_paths(source.paths)]}
    if source.kind == "passkey":
        return {}  # generated from the settings alone
    local = [Path(p) for p in source.data_files if Path(p).is_file()]
    return {"data_files": [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in local]}
