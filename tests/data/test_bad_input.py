"""Every bad input ends in one clear DataError naming the cause, and leaves nothing that looks finished."""

import json
import os
import subprocess
import sys

import pytest

from data.config import SourceConfig
from data.errors import DataError
from data.prepare import prepare


def local(*paths, **kwargs) -> SourceConfig:
    return SourceConfig(kind="local", paths=[str(p) for p in paths], **kwargs)


def assert_nothing_left(config):
    out = config.out_dir
    assert not os.path.exists(out) or os.listdir(out) == []


def test_empty_source(make_config, tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    config = make_config(local(tmp_path / "empty.txt"))
    with pytest.raises(DataError, match=r"source kind=local paths=\[.*empty.txt'\] produced no documents \(all 1 were empty\)"):
        prepare(config)
    assert_nothing_left(config)


def test_missing_and_unmatched_paths(make_config, tmp_path):
    with pytest.raises(DataError, match="no such file or directory: .*nope.jsonl"):
        prepare(make_config(local(tmp_path / "nope.jsonl")))
    with pytest.raises(DataError, match="matches no file"):
        prepare(make_config(local(tmp_path / "*.parquet")))
    with pytest.raises(DataError, match="source.paths is empty"):
        prepare(make_config(SourceConfig(kind="local")))


def write_jsonl_with_bad_line(path, good=30, bad_at=25):
    lines = [json.dumps({"text": f"document {i} " * 20}) for i in range(good)]
    lines.insert(bad_at - 1, '{"text": "unterminated')
    path.write_text("\n".join(lines) + "\n")


def test_malformed_jsonl_line_names_file_and_line(make_config, tmp_path):
    path = tmp_path / "bad.jsonl"
    write_jsonl_with_bad_line(path)
    # The tokenizer is trained on the first documents only, so the bad line is met while shards are
    # being written: the half-built output must not survive.
    config = make_config(local(path), **{"tokenizer.train_max_bytes": 1000})
    with pytest.raises(DataError, match=r"bad.jsonl:25: malformed JSON \(.*\); fix the line or set source.skip_bad_lines=true"):
        prepare(config)
    assert_nothing_left(config)


def test_skip_bad_lines_counts_them(make_config, tmp_path):
    path = tmp_path / "bad.jsonl"
    write_jsonl_with_bad_line(path)
    prepared = prepare(make_config(local(path, skip_bad_lines=True)))
    source = prepared.manifest["sources"][0]
    assert source["skipped_lines"] == 1 and source["documents"] == 30


def test_missing_text_field(make_config, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"body": "x", "id": 2}) + "\n")
    with pytest.raises(DataError, match=r"rows.jsonl:2: no field 'text' \(fields: body, id\); set source.text_field"):
        prepare(make_config(local(path)))


def test_unwritable_output_folder(make_config, jsonl_corpus, tmp_path):
    (tmp_path / "a_file").write_text("")
    config = make_config(local(jsonl_corpus), out_dir=str(tmp_path / "a_file" / "out"))
    with pytest.raises(DataError, match=r"out_dir=.*a_file/out: cannot write there \(Not a directory\)"):
        prepare(config)


def test_no_document_left_for_training_names_the_settings(make_config, tmp_path):
    """Every document weighted to zero: the error names what to change, the .txt unit among them."""
    (tmp_path / "one.txt").write_text("a single document")
    with pytest.raises(DataError, match="no document is left for training .*lower shards.val_fraction.*"
                                        "source.txt_unit=paragraph"):
        prepare(make_config(local(tmp_path / "one.txt", weight=0.0)))


def test_cli_prints_one_line_error_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "data", "source=local", f"source.paths=[{tmp_path}/missing.txt]", f"out_dir={tmp_path}/out"],
        capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: source.paths: no such file or directory: {tmp_path}/missing.txt"]
