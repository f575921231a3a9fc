"""Multiple-choice scoring (train/downstream.py) against one forward per choice over the full logits, on
any number of ranks; its file errors; and the training callback through a 2-rank run."""

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from tests.model_helpers import naive_choice_logliks
from tests.train_helpers import metrics, run_training, wandb_records
from train.downstream import accuracies, encode_choice, read_questions, score_share
from train.model import build_model, load_model

MAX_LEN = 48  # the tiny model's context: the long question below is left-truncated


def write_questions(path: Path, count: int = 10) -> Path:
    """`count` questions with 2 to 4 choices, "query" or "context", one longer than the model's context."""
    rows = []
    for i in range(count):
        choices = ["the sky", "a module", "json.dumps", "blue"][: 2 + i % 3]
        key = "query" if i % 2 else "context"
        text = f"Question {i}: what does the documentation say about item {i}?"
        rows.append({key: text * (8 if i == 5 else 1), "choices": choices, "answer": i % len(choices)})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def tokenizer(prepared_data) -> Tokenizer:
    return Tokenizer.from_file(str(Path(prepared_data) / "tokenizer.json"))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("llama3_tiny", vocab_size=512, max_seq_len=MAX_LEN).eval()


def naive_accuracies(model, tokenizer, questions) -> dict:
    right = right_norm = 0
    for q in questions:
        lls = torch.tensor(naive_choice_logliks(model, tokenizer, q.context, q.choices, model.config.max_seq_len))
        right += int(lls.argmax() == q.answer)
        right_norm += int((lls / torch.tensor([len(c) for c in q.choices])).argmax() == q.answer)
    return {"acc": right / len(questions), "acc_norm": right_norm / len(questions)}


def test_scores_equal_one_forward_per_choice_on_any_number_of_ranks(model, tokenizer, tmp_path, monkeypatch):
    questions = read_questions(write_questions(tmp_path / "mc.jsonl"))
    assert len(tokenizer.encode(questions[5].context).ids) > MAX_LEN  # truncation is exercised
    expected = naive_accuracies(model, tokenizer, questions)
    assert 0 < expected["acc"] < 1  # not a trivial score
    assert accuracies(score_share(model, tokenizer, questions, batch_size=5)) == pytest.approx(expected)
    forwards = []
    original = model.hidden_states
    monkeypatch.setattr(model, "hidden_states", lambda ids: forwards.append(1) or original(ids))
    for ranks in (3, 12):  # 12: more ranks than questions
        shares, counts = [], []
        for rank in range(ranks):
            forwards.clear()
            shares.append(score_share(model, tokenizer, questions, rank, ranks, batch_size=4))
            counts.append(len(forwards))
        assert len(set(counts)) == 1  # every rank runs as many forwards (sharded weights gather collectively)
        total = torch.stack(shares).sum(0)
        assert total[2] == len(questions) and accuracies(total) == pytest.approx(expected)


def test_a_choice_keeps_the_context_tokenization_and_takes_its_trailing_spaces(tokenizer):
    context, continuation = encode_choice(tokenizer, "Answer: ", "blue")
    assert context == tokenizer.encode("Answer:").ids
    assert context + continuation == tokenizer.encode("Answer:  blue").ids


@pytest.mark.parametrize("line, message", [
    ('{"choices": ["a", "b"], "answer": 0}', "mc.jsonl:2: needs a non-empty string 'query' (or 'context')"),
    ('{"query": "q", "choices": ["a"], "answer": 0}', "mc.jsonl:2: 'choices' must be a list of two or more"),
    ('{"query": "q", "choices": ["a", "b"], "answer": 2}', "mc.jsonl:2: 'answer' must be the index of the right choice"),
    ('{"query": "q", ', "mc.jsonl:2: not JSON"),
])
def test_a_bad_row_names_its_line(tmp_path, line, message):
    path = tmp_path / "mc.jsonl"
    path.write_text('{"query": "q", "choices": ["a", "b"], "answer": 1}\n' + line + "\n")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_questions(path)


@pytest.mark.slow
def test_the_callback_scores_the_sharded_model_on_two_ranks(prepared_data, tokenizer, tmp_path):
    """A 2-rank pre-training run scores every 2 steps and at the last, into metrics.jsonl and W&B; at the last
    step the sharded model's figures are what one forward per choice gives on its final model folder.
    ~35 s of CPU on 2 cores."""
    path = write_questions(tmp_path / "mc.jsonl", count=11)
    run_dir = tmp_path / "run"
    run_training(run_dir, prepared_data, "trainer.max_steps=3", f"downstream.path={path}", "downstream.every=2",
                 "downstream.batch_size=4", "logging.wandb.mode=offline", nproc=2)
    scored = {r["step"]: r for r in metrics(run_dir) if "downstream/acc" in r}
    assert sorted(scored) == [2, 3]
    logged = [{item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
              for run in run_dir.glob("wandb/offline-run-*/run-*.wandb") for record in wandb_records(run)
              if record.WhichOneof("record_type") == "history"]
    assert [float(h["downstream/acc"]) for h in logged if "downstream/acc" in h] == [scored[2]["downstream/acc"],
                                                                                    scored[3]["downstream/acc"]]
    expected = naive_accuracies(load_model(run_dir / "model"), tokenizer, read_questions(path))
    assert {"acc": scored[3]["downstream/acc"], "acc_norm": scored[3]["downstream/acc_norm"]} == pytest.approx(expected)
