"""`python -m data` as a user runs it: Hydra overrides, typed keys, the default corpus, the run folder."""

import json
import subprocess
import sys
import time

import yaml


def run(*overrides, cwd=None):
    return subprocess.run([sys.executable, "-m", "data", "progress=false", *overrides],
                          capture_output=True, text=True, cwd=cwd)


def test_local_source_overrides_and_summary(tmp_path, topic_texts):
    corpus = tmp_path / "a.txt"
    corpus.write_text("\n\n".join(topic_texts[:30]))
    out = tmp_path / "out"
    result = run("source=local", f"source.paths=[{corpus}]", "source.txt_unit=paragraph",
                 "tokenizer.vocab_size=4096", f"out_dir={out}", "name=mine")
    assert result.returncode == 0, result.stderr
    folder = out / "mine"
    assert f"prepared: {folder}" in result.stdout
    for path in (folder / "tokenizer.json", folder / "manifest.json", folder / "train", folder / "val"):
        assert str(path) in result.stdout and path.exists()
    saved = yaml.safe_load((folder / "config.yaml").read_text())
    assert saved["tokenizer"]["vocab_size"] == 4096 and saved["source"]["paths"] == [str(corpus)]
    again = run("source=local", f"source.paths=[{corpus}]", "source.txt_unit=paragraph",
                "tokenizer.vocab_size=4096", f"out_dir={out}", "name=mine")
    assert again.stdout.startswith("already prepared, nothing to do")


def test_mixture_from_the_command_line(tmp_path):
    corpus = tmp_path / "a.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"doc {i} " * 10}) + "\n" for i in range(10)))
    result = run("source.include_modules=false", f"mixture=[{{kind: local, paths: [{corpus}], weight: 2.0}}]",
                 "tokenizer.vocab_size=500", f"out_dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "stdlib" / "manifest.json").read_text())
    assert [(s["kind"], s["weight"], s["documents"]) for s in manifest["sources"]][1] == ("local", 2.0, 10)


def test_misspelled_key_is_an_error(tmp_path):
    result = run("tokenizer.vocab_sise=4096", f"out_dir={tmp_path}")
    assert result.returncode != 0
    assert "vocab_sise" in result.stderr and "not in 'TokenizerConfig'" in result.stderr
    assert not (tmp_path / "stdlib").exists()


def test_default_corpus_with_no_overrides(tmp_path):
    """The README's demo data: the standard library, prepared offline well within two minutes."""
    started = time.time()
    result = run(cwd=tmp_path)
    seconds = time.time() - started
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "outputs" / "data" / "stdlib" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["tokens"] > 1_000_000 and manifest["splits"]["val"]["documents"] > 0
    assert manifest["tokenizer"]["vocab_size"] == 8192 and manifest["dtype"] == "uint16"
    print(f"default corpus prepared in {seconds:.1f} s")  # the 2-minute target is checked by the README demo, not timed here
