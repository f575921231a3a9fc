"""SFT and DPO through the trainer: they resume after a killed rank like pre-training, and bad rows are
reported with their counts (2 gloo ranks, the tiny Llama, a few steps)."""

import json

import pytest

from tests.train_helpers import losses, metrics, run_training
from tests.shared_data import SHARED_DATA as SHARED

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def start_model(prepared_data, tmp_path_factory):
    """A briefly pre-trained model folder (weights + tokenizer) to post-train from."""
    run_dir = tmp_path_factory.mktemp("base") / "pretrain"
    run_training(run_dir, prepared_data, "trainer.max_steps=2")
    return str(run_dir / "model")


@pytest.mark.parametrize("stage", ["midtrain", "sft", "dpo"])
def test_stage_resumes_after_a_killed_rank(prepared_data, start_model, tmp_path, stage):
    common = [f"stage={stage}", f"init.weights={start_model}", "trainer.max_steps=6", "checkpoint.every=3",
              "trainer.deterministic=true", "trainer.val_every=3", "trainer.val_samples=8"]
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    run_training(clean, prepared_data, *common, nproc=2)
    result = run_training(crashed, prepared_data, *common, nproc=2, max_restarts=3, fault="die:rank=0:step=5")
    assert "injected crash before step 5" in result.stdout and "step_00000003" in result.stdout
    assert losses(crashed) == losses(clean) and sorted(losses(clean)) == list(range(1, 7))
    if stage == "dpo":
        final = [r for r in metrics(crashed) if "val_reward_accuracy" in r][-1]
        assert 0.0 <= final["val_reward_accuracy"] <= 1.0 and "val_reward_margin" in final


def test_bad_rows_are_reported_with_counts(prepared_data, start_model, tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]}
            for i in range(40)]
    rows.append({"messages": [{"role": "user", "content": "no answer here"}]})  # no assistant turn
    rows.append({"instruction": "x " * 2000, "input": "", "output": "too long a prompt"})  # prompt > seq_len
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    result = run_training(tmp_path / "run", prepared_data, "stage=sft", f"init.weights={start_model}",
                          "data.chat.kind=local", f"data.chat.paths=[{path}]", "trainer.max_steps=1")
    report = [line for line in result.stdout.splitlines() if line.startswith("data:")][0]
    assert "skipped 3" in report
    for reason in ("no assistant", "prompt longer than seq_len", "malformed JSON"):
        assert reason in report, report




@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data (real public data sets) is not on this machine")
@pytest.mark.parametrize("stage,file", [("sft", "alpaca_5000.json"), ("dpo", "hh_rlhf_harmless_base_test.jsonl.gz")])
def test_real_public_formats_by_overrides_only(prepared_data, start_model, tmp_path, stage, file):
    result = run_training(tmp_path / stage, prepared_data, f"stage={stage}", f"init.weights={start_model}",
                          "data.chat.kind=local", f"data.chat.paths=[{SHARED / file}]", "trainer.max_steps=2")
    report = [line for line in result.stdout.splitlines() if line.startswith("data:")][0]
    assert ("4,998 conversations" in report) if stage == "sft" else ("preference pairs" in report)
    assert sorted(losses(tmp_path / stage)) == [1, 2]
