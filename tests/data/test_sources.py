"""Each source kind yields exactly the documents in its input, in a fixed order."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data.config import SourceConfig
from data.errors import DataError
from data.sources import SourceStats, read_documents, stdlib_module_files

from pydoc_data.topics import topics

TOPIC_TEXTS = [topics[name] for name in sorted(topics)]

DOCS = ["first document\nwith two lines", "second: ünïcode ✓ and emoji 🐍", "third"]


def read(source: SourceConfig):
    stats = SourceStats()
    return list(read_documents(source, stats)), stats


def test_stdlib_default_has_topics_then_modules():
    docs, stats = read(SourceConfig(kind="stdlib"))
    files = stdlib_module_files()
    assert len(files) > 100 and all("/test/" not in str(f) for f in files)
    assert docs[: len(TOPIC_TEXTS)] == [t for t in TOPIC_TEXTS if t.strip()]
    assert docs[-1] == files[-1].read_text(encoding="utf-8", errors="replace")
    assert stats.documents == len(docs)


def test_stdlib_parts_and_max_documents():
    only_topics, _ = read(SourceConfig(kind="stdlib", include_modules=False))
    assert only_topics == [t for t in TOPIC_TEXTS if t.strip()]
    first, stats = read(SourceConfig(kind="stdlib", include_topics=False, max_documents=3))
    assert first == [f.read_text(encoding="utf-8", errors="replace") for f in stdlib_module_files()[:3]]
    assert stats.documents == 3


def write_formats(folder):
    """The same three documents in every local format."""
    folder.mkdir()
    (folder / "a.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    (folder / "b.json").write_text(json.dumps([{"text": d, "other": 1} for d in DOCS]))
    (folder / "c.json").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))  # JSON lines in .json
    pq.write_table(pa.table({"text": DOCS}), folder / "d.parquet")
    with gzip.open(folder / "e.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in DOCS)
    (folder / "f.txt").write_text(DOCS[0])
    (folder / "notes.md").write_text("not a data file")


@pytest.mark.parametrize("name", ["a.jsonl", "b.json", "c.json", "d.parquet", "e.jsonl.gz"])
def test_local_file_formats(tmp_path, name):
    write_formats(tmp_path / "in")
    docs, stats = read(SourceConfig(kind="local", paths=[str(tmp_path / "in" / name)]))
    assert docs == DOCS and stats.documents == 3


def test_local_directory_and_glob_are_sorted_and_skip_other_files(tmp_path):
    write_formats(tmp_path / "in")
    by_dir, _ = read(SourceConfig(kind="local", paths=[str(tmp_path / "in")]))
    assert by_dir == DOCS * 5 + [DOCS[0]]  # a, b, c, d, e, f; notes.md ignored
    by_glob, _ = read(SourceConfig(kind="local", paths=[str(tmp_path / "in" / "*.json")]))
    assert by_glob == DOCS * 2


@pytest.mark.parametrize("unit,expected", [
    ("file", ["one\ntwo\n\nthree\n  \nfour\n"]),
    ("paragraph", ["one\ntwo", "three", "four\n"]),
    ("line", ["one", "two", "three", "four"]),
])
def test_txt_units(tmp_path, unit, expected):
    (tmp_path / "t.txt").write_text("one\ntwo\n\nthree\n  \nfour\n")
    docs, stats = read(SourceConfig(kind="local", paths=[str(tmp_path / "t.txt")], txt_unit=unit))
    assert docs == expected
    assert stats.empty_documents == (2 if unit == "line" else 0)


def test_text_field_is_configurable(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text("".join(json.dumps({"body": d}) + "\n" for d in DOCS))
    docs, _ = read(SourceConfig(kind="local", paths=[str(path)], text_field="body"))
    assert docs == DOCS


@pytest.mark.parametrize("builder,file", [("json", "a.jsonl"), ("parquet", "d.parquet"), ("json", "b.json")])
@pytest.mark.parametrize("streaming", [False, True])
def test_hugging_face_dataset_offline(tmp_path, monkeypatch, builder, file, streaming):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    write_formats(tmp_path / "in")
    source = SourceConfig(kind="hf", name=builder, data_files=[str(tmp_path / "in" / file)], streaming=streaming)
    docs, _ = read(source)
    assert docs == DOCS


def test_hugging_face_dataset_folder(tmp_path, monkeypatch):
    """A dataset folder (as on the hub: data files in a repo) loads by its path as the name."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps({"content": d}) + "\n" for d in DOCS))
    docs, _ = read(SourceConfig(kind="hf", name=str(folder), text_field="content"))
    assert docs == DOCS
    with pytest.raises(DataError, match=r"no column 'text' \(columns: content\)"):
        read(SourceConfig(kind="hf", name=str(folder)))


def test_unknown_kind_names_the_choices():
    with pytest.raises(DataError, match="source.kind='s3' is unknown; use one of: stdlib, local, hf"):
        read(SourceConfig(kind="s3"))
