"""The whole pipeline in one command, shortened: every stage runs, the summary reports, a re-run skips."""

import json
import math
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SHORT = ["data.source.include_modules=false", "data.tokenizer.vocab_size=1024", "train.model.vocab_size=1024",
         "pretrain.trainer.max_steps=8", "midtrain.trainer.max_steps=2", "sft.trainer.max_steps=4",
         "dpo.trainer.max_steps=4", "train.trainer.val_samples=16", "train.trainer.log_every=2"]


def pipeline(out, *extra):
    return subprocess.run([sys.executable, "-m", "launch.pipeline", "--nproc", "2", "--out", str(out),
                           "--passkey-documents", "50", *SHORT, *extra],
                          capture_output=True, text=True, timeout=900)


def table_rows(markdown: str) -> list:
    """The cells of every Markdown table row that is not a header or a separator."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines() if line.startswith("| ")]
    return [r for r in rows if r[0] not in ("stage", "passkey")]  # the header rows


def final_record(run_dir) -> dict:
    """The last value of every metric the run logged."""
    last = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        last.update(json.loads(line))
    return last


def test_pipeline_runs_every_stage_then_skips_them(tmp_path):
    result = pipeline(tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    summary = (tmp_path / "pipeline_summary.md").read_text()
    rows = {cells[0]: cells[1:] for cells in table_rows(summary)}
    for stage, steps in (("pretrain", 8), ("midtrain", 2), ("sft", 4), ("dpo", 4)):
        first_loss, train_loss, val_loss, perplexity, logged_steps, plot = rows[stage]
        records = [json.loads(line) for line in (tmp_path / "runs" / stage / "metrics.jsonl").read_text().splitlines()]
        last = final_record(tmp_path / "runs" / stage)
        assert float(first_loss) == pytest.approx(next(r["loss"] for r in records if "loss" in r), abs=5e-5)
        assert float(train_loss) == pytest.approx(last["loss"], abs=5e-5) and math.isfinite(float(train_loss))
        assert float(val_loss) == pytest.approx(last["val_loss"], abs=5e-5) and math.isfinite(float(val_loss))
        if stage == "pretrain":
            assert float(perplexity) == pytest.approx(math.exp(last["val_loss"]), rel=1e-3)
        assert int(logged_steps) == steps and (tmp_path / "runs" / stage / "model" / "model.safetensors").is_file()
        assert plot == f"[loss.png](runs/{stage}/loss.png)" and (tmp_path / "runs" / stage / "loss.png").is_file()
    for label in ("before YaRN", "after YaRN"):
        assert len(rows[label]) == 3 and all(0.0 <= float(v) <= 1.0 for v in rows[label])
    accuracy, margin = re.search(r"reward accuracy ([\d.]+), margin (-?[\d.]+)", summary).groups()
    dpo = final_record(tmp_path / "runs" / "dpo")
    assert float(accuracy) == pytest.approx(dpo["val_reward_accuracy"], abs=6e-4) and math.isfinite(float(margin))  # 3 decimals
    assert "| before YaRN |" in summary and "| after YaRN |" in summary and "1x | 2x | 4x" in summary
    assert "DPO on held-out pairs: reward accuracy" in summary
    for label in ("before SFT", "after SFT", "after DPO"):  # each answer, and whether it ended its turn
        assert re.search(rf"\n- {label}: .+ \((ended its turn|no end of turn within 48 tokens)", summary), label
    assert "the SFT data's answer: \"Serialize" in summary
    manifest = json.loads((tmp_path / "data" / "stdlib_long" / "manifest.json").read_text())
    assert [(s["kind"], s["documents"]) for s in manifest["sources"]][2] == ("passkey", 50)  # the synthetic share
    assert (tmp_path / "hf" / "config.json").is_file() and (tmp_path / "hf" / "tokenizer.json").is_file()
    assert "position" in (tmp_path / "runs" / "midtrain" / "model" / "model.yaml").read_text()
    assert "kind: yarn" in (tmp_path / "runs" / "midtrain" / "model" / "model.yaml").read_text()

    again = pipeline(tmp_path)
    assert again.returncode == 0, again.stdout[-4000:]
    assert again.stdout.count("finished earlier, skipped") == 4


def test_override_needs_a_stage_prefix(tmp_path):
    result = subprocess.run([sys.executable, "-m", "launch.pipeline", "--out", str(tmp_path), "trainer.max_steps=3"],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "must start with one of data., train., pretrain." in result.stderr
