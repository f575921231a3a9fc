"""loss.png of a run, from its metrics.jsonl: a valid PNG drawing the run's own curves (checked by the data
drawn and the file's metadata, not pixels), for a finished run, a DPO run, and one still going."""

import json

import pytest
from PIL import Image

from launch import report
from train.plots import plot_run


def write_metrics(run_dir, dpo=False, torn=False):
    """Train records every 5 steps (loss, lr), validation every 10; DPO adds reward accuracy and margin."""
    run_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for step in range(5, 35, 5):
        train = {"step": step, "loss": 9.0 - step / 10, "lr": 1e-3 * step / 30, "grad_norm": 1.0, "tokens_per_s": 1e3}
        if dpo:
            train.update(reward_accuracy=0.5 + step / 100, reward_margin=step / 50)
        records.append(train)
        if step % 10 == 0:
            records.append({"step": step, "val_loss": 9.5 - step / 10, **({"val_reward_accuracy": 0.6,
                                                                             "val_reward_margin": 0.2} if dpo else {})})
    text = "".join(json.dumps(r) + "\n" for r in records) + ('{"step": 35, "lo' if torn else "")
    (run_dir / "metrics.jsonl").write_text(text)
    return records


def png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(path)
    image.verify()
    return Image.open(path)


@pytest.mark.parametrize("dpo", [False, True])
def test_loss_png_draws_the_runs_curves(tmp_path, dpo):
    records = write_metrics(tmp_path / "run", dpo=dpo)
    path, curves = plot_run(tmp_path / "run")
    assert path == tmp_path / "run" / "loss.png"
    expected = {key for r in records for key in r} - {"step", "grad_norm", "tokens_per_s"}
    assert set(curves) == expected
    for key, (steps, values) in curves.items():
        assert list(zip(steps, values)) == [(r["step"], r[key]) for r in records if key in r]
    image = png(path)
    assert image.text["Source"] == f"{(tmp_path / 'run' / 'metrics.jsonl').resolve()}: {len(records)} records, last step 30"
    assert image.size[1] > (700 if dpo else 400)  # four panels for DPO, two otherwise


def test_a_run_still_going_and_the_report_command(tmp_path, capsys):
    write_metrics(tmp_path / "run", torn=True)  # the trainer is in the middle of writing a line
    assert report.main([f"run={tmp_path / 'run'}"]) == 0
    assert "loss (6 points to step 30), lr (6 points to step 30), val_loss (3 points to step 30)" in capsys.readouterr().out
    assert png(tmp_path / "run" / "loss.png").text["Source"].endswith("9 records, last step 30")


def test_the_report_command_names_what_is_missing(tmp_path):
    with pytest.raises(SystemExit, match="metrics.jsonl: no such file; is .* a run folder"):
        report.main([f"run={tmp_path}"])
    with pytest.raises(SystemExit):
        report.main(["runs/x"])  # neither run= nor sweep=
