"""`python -m train.evaluate`: lm-evaluation-harness on an exported model, with local task files, gives the
accuracy a direct computation with the project's own model says it must; without lm-eval, one line says
what to install."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from common.paths import REPO
from tests.model_helpers import naive_choice_logliks
from train import evaluate
from train.model import build_model, save_model

TASK_YAML = """task: tiny_mc_yaml
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{query}}}}"
doc_to_choice: choices
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


@pytest.mark.slow
def test_lm_eval_scores_local_tasks_on_an_exported_model_as_the_model_itself_does(prepared_data, tmp_path):
    """20 questions whose answers are chosen from the model's own log-likelihoods (the likeliest choice for
    every other question, another one otherwise), so acc must be exactly 0.5 and acc_norm what the same
    numbers per character give. ~30 s on 2 cores (most of it importing lm-eval and transformers)."""
    pytest.importorskip("lm_eval")
    torch.manual_seed(0)
    model = build_model("llama3_tiny", vocab_size=512).eval()
    folder = save_model(model, tmp_path / "model")
    for name in ("tokenizer.json", "tokenizer_config.json"):  # as a run's model folder holds them
        shutil.copy(Path(prepared_data) / name, folder / name)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    rows, right_norm = [], 0
    for i in range(20):
        query, choices = f"Question {i}: which name does the documentation give?", ["json.dumps", "os.path", "the sky"]
        lls = torch.tensor(naive_choice_logliks(model, tokenizer, query, choices, model.config.max_seq_len))
        answer = int(lls.argmax()) if i % 2 == 0 else (int(lls.argmax()) + 1) % len(choices)
        right_norm += int((lls / torch.tensor([len(c) for c in choices])).argmax() == answer)
        rows.append({"query": query, "choices": choices, "answer": answer})
    (tmp_path / "tiny_mc.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "tiny_mc.yaml").write_text(TASK_YAML.format(path=tmp_path / "tiny_mc.jsonl"))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_DATASETS_CACHE=str(tmp_path / "cache"))
    command = [sys.executable, "-m", "train.evaluate", f"model_dir={folder}", f"out={tmp_path / 'results.json'}",
               f"task_files=[{tmp_path / 'tiny_mc.yaml'},{tmp_path / 'tiny_mc.jsonl'}]", "batch_size=4"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    for task in ("tiny_mc_yaml", "tiny_mc"):  # the YAML task and the JSONL file read as one
        assert results["n-samples"][task]["effective"] == 20
        assert results["results"][task]["acc,none"] == 0.5
        assert results["results"][task]["acc_norm,none"] == pytest.approx(right_norm / 20)
        assert any(line.split()[:3] == [task, "acc", "0.5000"] for line in done.stdout.splitlines()), done.stdout


def test_without_lm_eval_the_error_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # what an absent package looks like to `import`
    with pytest.raises(ModuleNotFoundError, match=r'^lm-eval is not installed: pip install -e "\.\[eval\]"'):
        evaluate.evaluate(evaluate.EvaluateConfig(model_dir=str(tmp_path), task_files=["x.jsonl"]))


def test_a_missing_task_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="task_files: .*nowhere.yaml: no such file"):
        evaluate.local_tasks([str(tmp_path / "nowhere.yaml")])
