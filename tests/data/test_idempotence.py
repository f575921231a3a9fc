"""Re-running an unchanged config is a no-op; a changed config or input rebuilds; the folder is stable."""

import os
import time

from data.config import SourceConfig
from data.prepare import prepare


def test_rerun_is_a_noop_and_changes_rebuild(make_config, jsonl_corpus):
    source = SourceConfig(kind="local", paths=[str(jsonl_corpus)])
    first = prepare(make_config(source))
    assert not first.reused
    shard = first.path / "train" / "00000.bin"
    written = shard.stat().st_mtime_ns

    again = prepare(make_config(source))
    assert again.reused and again.path == first.path and again.manifest == first.manifest
    assert shard.stat().st_mtime_ns == written  # nothing was rewritten
    # settings that only change speed or display don't count as changes
    assert prepare(make_config(source, num_workers=2, batch_documents=5, progress=True)).reused

    changed = prepare(make_config(source, **{"tokenizer.vocab_size": 300}))
    assert not changed.reused and changed.path == first.path
    assert changed.manifest["fingerprint"] != first.manifest["fingerprint"]
    assert changed.manifest["tokenizer"]["vocab_size"] == 300

    # the same config over an edited input file is a change too
    time.sleep(0.01)
    with open(jsonl_corpus, "a") as f:
        f.write('{"text": "one more document"}\n')
    edited = prepare(make_config(source, **{"tokenizer.vocab_size": 300}))
    assert not edited.reused and edited.manifest["sources"][0]["documents"] == 21
    # no temporary or old folders are left beside the output
    assert sorted(os.listdir(first.path.parent)) == ["test"]
