"""SFT and DPO through the trainer: they resume after a killed rank like pre-training, and bad rows are
reported with their counts (2 gloo ranks, the tiny Llama, a few steps)."""

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tokenizers import Tokenizer

from data.chat.preferences import load_pairs
from data.chat.rows import ChatSource
from data.chat.template import IGNORE
from data.reader import EpochOrder
from train.dpo_loss import dpo_loss
from train.model import load_model
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
    # DPO's crashed run precomputes the reference's log-probs: once, read again after the restart, and
    # its losses are those of the clean run's live reference
    precompute = ["dpo.precompute_reference=true"] if stage == "dpo" else []
    result = run_training(crashed, prepared_data, *common, *precompute, nproc=2, max_restarts=3,
                          fault="die:rank=0:step=5")
    assert "injected crash before step 5" in result.stdout and "step_00000003" in result.stdout
    assert losses(crashed) == losses(clean) and sorted(losses(clean)) == list(range(1, 7))
    if stage == "dpo":
        assert result.stdout.count("reference log-probs: computed for") == 1
        assert result.stdout.index("reference log-probs: read from") > result.stdout.index("injected crash")
        # the held-out rewards use the precomputed held-out values; here they are recomputed from full logits
        final = [r for r in metrics(crashed) if "val_reward_accuracy" in r][-1]
        expected = held_out_rewards(crashed / "model", start_model, crashed)
        assert final["step"] == 6 and final["val_reward_accuracy"] == expected["accuracy"]
        assert final["val_reward_margin"] == pytest.approx(expected["margin"], abs=1e-4)


def sequence_logp(model, ids, labels) -> float:
    """Sum of log p(label) over the labelled positions, from the full logits (no chunking, no fusing)."""
    with torch.no_grad():
        log_probs = torch.log_softmax(model(torch.tensor([ids]))[0, :-1].double(), dim=-1)
    targets = torch.tensor(labels[1:])
    keep = targets != IGNORE
    return float(log_probs[keep].gather(1, targets[keep][:, None]).sum())


def held_out_rewards(policy_dir, reference_dir, run_dir) -> dict:
    """DPO's held-out reward accuracy and margin recomputed from the saved models: the first
    trainer.val_samples held-out pairs, rewards beta * (log pi - log pi_ref) of each response."""
    config = OmegaConf.load(run_dir / "config.yaml")
    tokenizer = Tokenizer.from_file(str(Path(reference_dir) / "tokenizer.json"))
    _, held_out, _ = load_pairs(ChatSource(), tokenizer, config.data.seq_len, config.data.chat_val_fraction)
    policy, reference = load_model(policy_dir).eval(), load_model(reference_dir).eval()
    margins = []
    for pair in held_out[: config.trainer.val_samples]:
        rewards = [config.dpo.beta * (sequence_logp(policy, ids, labels) - sequence_logp(reference, ids, labels))
                   for ids, labels in ((pair.chosen_ids, pair.chosen_labels), (pair.rejected_ids, pair.rejected_labels))]
        margins.append(rewards[0] - rewards[1])
    return {"accuracy": sum(m > 0 for m in margins) / len(margins), "margin": sum(margins) / len(margins)}


@pytest.mark.parametrize("loss_type", ["simpo", "orpo"])
def test_reference_free_first_loss_equals_the_pairs_mean(prepared_data, start_model, tmp_path, loss_type):
    """Step 1 (the policy is still the start model) of SimPO and ORPO through the trainer, 4 micro-batches
    of 2 pairs: its loss is the mean over the step's 8 pairs of the per-pair loss from full logits."""
    run_dir = tmp_path / loss_type
    run_training(run_dir, prepared_data, "stage=dpo", f"init.weights={start_model}", "trainer.max_steps=1",
                 f"dpo.loss_type={loss_type}", "dpo.beta=2.0", "trainer.record_samples=true")
    config = OmegaConf.load(run_dir / "config.yaml")
    tokenizer = Tokenizer.from_file(str(Path(start_model) / "tokenizer.json"))
    train, _, _ = load_pairs(ChatSource(), tokenizer, config.data.seq_len, config.data.chat_val_fraction)
    order = EpochOrder(len(train), config.data.seed, shuffle=True)
    indices = json.loads((run_dir / "samples" / "rank_0.jsonl").read_text().splitlines()[0])["indices"]
    model = load_model(start_model).eval()
    logps, tokens = [], []
    for pair in (train[order(i)] for i in indices):
        for ids, labels in ((pair.chosen_ids, pair.chosen_labels), (pair.rejected_ids, pair.rejected_labels)):
            logps.append(sequence_logp(model, ids, labels))
            tokens.append(sum(label != IGNORE for label in labels[1:]))
    logps, tokens = torch.tensor(logps, dtype=torch.float64).view(-1, 2), torch.tensor(tokens).view(-1, 2)
    expected = dpo_loss(logps[:, 0], logps[:, 1], beta=2.0, loss_type=loss_type, chosen_tokens_B=tokens[:, 0],
                        rejected_tokens_B=tokens[:, 1]).losses_B.mean().item()
    assert len(indices) == 8 and losses(run_dir)[1] == pytest.approx(expected, abs=1e-5)


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
