"""The whole pipeline in one command, shortened: every stage runs, the summary reports, a re-run skips."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SHORT = ["data.source.include_modules=false", "data.tokenizer.vocab_size=1024", "train.model.vocab_size=1024",
         "pretrain.trainer.max_steps=8", "midtrain.trainer.max_steps=2", "sft.trainer.max_steps=4",
         "dpo.trainer.max_steps=4", "train.trainer.val_samples=16", "train.trainer.log_every=2"]


def pipeline(out, *extra):
    return subprocess.run([sys.executable, "-m", "launch.pipeline", "--nproc", "2", "--out", str(out), *SHORT, *extra],
                          capture_output=True, text=True, timeout=900)


def test_pipeline_runs_every_stage_then_skips_them(tmp_path):
    result = pipeline(tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    summary = (tmp_path / "pipeline_summary.md").read_text()
    for stage in ("pretrain", "midtrain", "sft", "dpo"):
        assert f"| {stage} |" in summary and (tmp_path / "runs" / stage / "model" / "model.safetensors").is_file()
    assert "| before YaRN |" in summary and "| after YaRN |" in summary and "1x | 2x | 4x" in summary
    assert "DPO on held-out pairs: reward accuracy" in summary
    assert "- before SFT:" in summary and "- after DPO:" in summary
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
