"""Rank 0's progress display: a bar with steps, elapsed, ETA, tokens/s and loss on a terminal; report lines
with the elapsed time and the ETA appended elsewhere (a pipe, a log file, SLURM)."""

import io
import re

import pytest

from train import progress_display
from train.progress_display import ProgressDisplay, clock

RECORD = {"loss": 4.25, "tokens_per_s": 12345.0}


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def seconds(monkeypatch):
    """A clock the test moves by hand."""
    now = [100.0]
    monkeypatch.setattr(progress_display.time, "perf_counter", lambda: now[0])
    return now


def test_lines_get_elapsed_and_eta_when_not_a_terminal(seconds):
    out = io.StringIO()
    display = ProgressDisplay("pretrain", 200, "auto", enabled=True, stream=out)
    display.start(50)  # resumed at step 50: the ETA counts this attempt's pace
    seconds[0] += 30.0
    display.report("step    60/200 | loss 4.2500", 60, RECORD)
    assert out.getvalue() == "step    60/200 | loss 4.2500 | 0:30 elapsed, ETA 7:00\n"  # 140 steps at 3 s each
    assert display.bar is None


def test_a_bar_on_a_terminal_with_the_lines_above_it(seconds):
    out = Terminal()
    display = ProgressDisplay("midtrain", 40, "auto", enabled=True, stream=out)
    display.start(0)
    for step in range(1, 11):
        seconds[0] += 2.0
        display.advance(step)
    display.report("step    10/40 | loss 4.2500", 10, RECORD)
    display.close()
    text = out.getvalue()
    assert "step    10/40 | loss 4.2500\n" in text and "| loss 4.2500 |" not in text.split("\n")[-1]
    final = text.split("\r")[-1]
    assert final.startswith("midtrain  25%|") and "10/40" in final and "loss 4.2500, 12,345 tok/s" in final


def test_bar_and_lines_can_be_forced_and_other_ranks_show_nothing():
    piped = io.StringIO()
    assert ProgressDisplay("sft", 10, "bar", enabled=True, stream=piped).use_bar
    assert not ProgressDisplay("sft", 10, "lines", enabled=True, stream=Terminal()).use_bar
    quiet = ProgressDisplay("sft", 10, "auto", enabled=False, stream=piped)
    quiet.start(0)
    quiet.report("step 1/10", 1, RECORD)
    assert piped.getvalue() == "" and quiet.bar is None
    with pytest.raises(ValueError, match="logging.progress='fancy' is unknown; use one of auto, bar, lines"):
        ProgressDisplay("sft", 10, "fancy", enabled=True)


def test_clock():
    assert clock(5) == "0:05" and clock(125.4) == "2:05" and clock(3 * 3600 + 61) == "3:01:01"


@pytest.mark.slow
def test_a_run_prints_timed_lines_and_draws_its_losses(tmp_path, prepared_data):
    """A real run under a pipe (~10 s): report lines end with the elapsed time and the ETA, and loss.png draws
    the metrics.jsonl it wrote."""
    from PIL import Image

    from tests.train_helpers import metrics, run_training
    from train.plots import run_curves

    run_dir = tmp_path / "run"
    result = run_training(run_dir, prepared_data, "trainer.max_steps=4", "trainer.log_every=2", "trainer.val_every=2")
    lines = [line for line in result.stdout.splitlines() if line.startswith("step ") and "loss" in line and "val" not in line]
    assert len(lines) == 2 and all(re.search(r"\| \d+:\d\d elapsed, ETA \d+:\d\d$", line) for line in lines)
    assert f"plot       {(run_dir / 'loss.png').resolve()}" in result.stdout
    image = Image.open(run_dir / "loss.png")
    records = metrics(run_dir)
    assert image.format == "PNG" and image.text["Source"].endswith(f"{len(records)} records, last step 4")
    assert set(run_curves(records)) == {"loss", "lr", "val_loss"}
