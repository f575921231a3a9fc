"""The report from run folders, without training: fake metrics beside real resolved configs."""

import json

import pytest
from tests.sweep_helpers import check_report, markdown_rows
from omegaconf import OmegaConf

from launch.report import write_report
from launch.sweep import parse_args, plan


def fake_run(run_dir, config: dict, losses, finished=True):
    """What the trainer leaves: config.yaml, metrics.jsonl (train records every 5 steps, validation every 10)
    and, when it finished, model/model.safetensors."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    records = []
    for i, loss in enumerate(losses, start=1):
        step = 5 * i
        records.append({"step": step, "loss": loss, "tokens_per_s": 1000.0 * i, "memory_gb": 0.1 * i + 0.3,
                        "tokens_seen": step * 4096})
        if step % 10 == 0:
            records.append({"step": step, "val_loss": loss + 0.1})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if finished:
        (run_dir / "model").mkdir()
        (run_dir / "model" / "model.safetensors").write_bytes(b"")


def test_report_from_run_folders(tmp_path):
    args, items = parse_args(["sweep=ffn", "--match=params", "--seeds=1", "--out", str(tmp_path)])
    state = plan(args, items, "python -m launch.sweep sweep=ffn --match=params")
    configs = {p.name: p.config for p in state.points}
    fake_run(tmp_path / "swiglu", configs["swiglu"], [6.0, 5.5, 5.2, 5.0])
    fake_run(tmp_path / "mlp", configs["mlp"], [6.1, 5.6, 5.3, 4.9])
    fake_run(tmp_path / "glu", configs["glu"], [6.2, 5.9], finished=False)  # stopped half way
    state.points[2].fail("killed: Signal 9 (SIGKILL) received by PID 7")
    state.points[2].attempts = 2
    state.save()  # moe: planned, never started

    write_report(tmp_path)
    rows = check_report(tmp_path, ["swiglu", "mlp"])
    assert rows["mlp"]["final_train_loss"] == 4.9 and rows["mlp"]["final_val_loss"] == pytest.approx(5.0)
    assert rows["mlp"]["tokens_per_s"] == 3000.0 and rows["mlp"]["peak_memory_gb"] == 0.7  # median of 2000..4000
    assert rows["mlp"]["val_curve"] == [[10 * 16 * 256, pytest.approx(5.7)], [20 * 16 * 256, pytest.approx(5.0)]]
    assert rows["glu"]["status"] == "failed" and rows["glu"]["final_train_loss"] == 5.9 and rows["glu"]["steps"] == 10
    assert rows["moe"]["status"] == "pending" and rows["moe"]["final_train_loss"] is None
    assert rows["moe"]["total_params"] > rows["moe"]["active_params"]  # from the config planned in sweep.json

    report = (tmp_path / "report.md").read_text()
    table = markdown_rows(report)
    assert table["point"][-1] == "matched params" and table["swiglu"][-1] == "reference"
    adjustment = state.points[1].adjustment
    assert table["mlp"][-1].startswith(f"`model.ffns.mlp.hidden_dim` 256 → {adjustment['after']} (")
    assert table["moe"][1:2] == ["pending"] and table["moe"][7:11] == ["-", "-", "-", "-"]
    assert "- `glu` failed after 2 attempt(s): killed: Signal 9 (SIGKILL) received by PID 7" in report
    assert "Command: `python -m launch.sweep sweep=ffn --match=params`" in report
    assert "![val_loss_vs_tokens.png](val_loss_vs_tokens.png)" in report
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporary files
