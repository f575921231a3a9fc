"""Faults in the data: a shard corrupted on disk, and data preparation killed midway."""

import os
import re
import shutil
import signal
import time

import pytest

from data.reader import PreparedData
from tests.fault_helpers import fault_rng, python_job, start_training, wait_until

pytestmark = pytest.mark.slow


def test_flipped_byte_in_a_shard_stops_training_before_any_step_and_names_it(prepared_data, tmp_path, jobs):
    data = tmp_path / "data"
    shutil.copytree(prepared_data, data)
    shard = data / "train" / "00000.bin"
    content = bytearray(shard.read_bytes())
    content[len(content) // 2] ^= 0x01
    shard.write_bytes(bytes(content))
    job = start_training(jobs, tmp_path / "run", str(data))
    assert job.finish() != 0
    assert re.search(rf"^\S*DataError: {re.escape(str(shard))}: checksum differs from the manifest; prepare the data again$",
                     job.output, re.M), job.output[-3000:]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # not one step trained on it
    print(f"stopped {job.times[-1] - job.started:.1f} s after the start")


@pytest.mark.heavy
def test_data_preparation_killed_midway_leaves_the_finished_output_and_a_rerun_completes(tmp_path, jobs):
    """A rebuild (another vocabulary) over a finished folder, SIGKILLed at a random moment while its two
    tokenizer processes work: the folder still holds the earlier, complete output, the tokenizer processes
    are gone too, and the rerun replaces the output with the new one."""
    rng, out = fault_rng(), tmp_path / "out"

    def prepare(vocab_size: int):
        return python_job(jobs, tmp_path / "prepare.log", "-m", "data", f"out_dir={out}", "name=prep", "progress=false",
                          "num_workers=2", "batch_documents=4", "source.max_documents=100",
                          f"tokenizer.vocab_size={vocab_size}")

    assert prepare(300).finish() == 0
    finished = PreparedData(out / "prep").manifest
    job = prepare(400)
    wait_until(lambda: list(out.glob(".prep.tmp-*")) and len(job.processes()) >= 3, 120, "the rebuild tokenizing")
    time.sleep(rng.uniform(0, 1))
    assert job.process.poll() is None, "the rebuild was over before the kill"
    os.kill(job.process.pid, signal.SIGKILL)
    job.assert_no_orphans(within=2.0)  # its tokenizer processes go with it
    assert job.finish() == -signal.SIGKILL
    kept = PreparedData(out / "prep")
    assert kept.manifest == finished
    kept.verify()

    rerun = prepare(400)
    assert rerun.finish() == 0
    print(f"the rerun completed in {time.time() - rerun.started:.1f} s")
    rebuilt = PreparedData(out / "prep")
    assert rebuilt.vocab_size == 400 and rebuilt.manifest["fingerprint"] != finished["fingerprint"]
    rebuilt.verify()
    assert sorted(os.listdir(out)) == ["prep"]  # the killed run's temporary folder is gone
