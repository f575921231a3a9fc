"""What a sweep report's row must say, computed independently from a run folder: the inspector on the
resolved config (config.yaml) and the records of metrics.jsonl, and the cells written out here."""

import json
import statistics
from pathlib import Path

from omegaconf import OmegaConf

from train.model.config import to_model_config
from train.model.summary import summarize

# Tiny and fast: 512-token vocab (the test data's), 128-token windows, 20 steps of 8 sequences.
TINY = ["model.vocab_size=512", "data.seq_len=128", "trainer.global_batch_size=8", "trainer.micro_batch_size=4",
        "trainer.max_steps=20", "trainer.log_every=5", "trainer.val_every=10", "trainer.val_samples=8",
        "checkpoint.mode=sync", "optim.warmup_steps=2"]


def expected_row(run_dir: Path) -> dict:
    config = OmegaConf.load(run_dir / "config.yaml")
    model = to_model_config(config.model)
    train = summarize(model, config.data.seq_len, "bf16")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in records if "loss" in r]
    vals = [r for r in records if "val_loss" in r]
    tokens_per_step = config.trainer.global_batch_size * config.data.seq_len
    return {
        "total_params": train.params_total,
        "active_params": train.params_active,
        "train_flops_per_token": train.flops_per_token,
        "cache_bytes_per_token_4k": summarize(model, 4096, "bf16").kv_bytes_total / 4096,
        "cache_bytes_per_token_32k": summarize(model, 32768, "bf16").kv_bytes_total / 32768,
        "final_train_loss": losses[-1]["loss"],
        "final_val_loss": vals[-1]["val_loss"],
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in losses[1:]),
        "peak_memory_gb": max(r["memory_gb"] for r in losses),
        "val_curve": [[r["step"] * tokens_per_step, r["val_loss"]] for r in vals],
    }


def markdown_rows(report_md: str) -> dict:
    """{point: [cells]} of the report's table, the header under "point"."""
    rows = [line.strip("|").split("|") for line in report_md.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells] for cells in rows}


def expected_cells(point: str, expected: dict) -> list:
    """The Markdown cells a finished point's row must show, written out here: counts in K/M/B with two
    decimals, bytes in binary units (one decimal under 1 KiB), losses to 4 places, tokens/s whole."""
    def count(n):
        unit, size = next(((u, s) for u, s in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)) if n >= s), ("", 1))
        return f"{n / size:.2f}{unit}" if unit else str(int(n))

    def binary(n):
        unit, size = next(((u, s) for u, s in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)) if n >= s), ("B", 1))
        return f"{n / size:.2f} {unit}" if unit != "B" else (f"{n:.1f} B" if n != int(n) else f"{int(n)} B")

    return [point, "finished", count(expected["total_params"]), count(expected["active_params"]),
            count(expected["train_flops_per_token"]), binary(expected["cache_bytes_per_token_4k"]),
            binary(expected["cache_bytes_per_token_32k"]), f"{expected['final_train_loss']:,.4f}",
            f"{expected['final_val_loss']:,.4f}", f"{expected['tokens_per_s']:,.0f}", f"{expected['peak_memory_gb']:.2f} GB"]


def check_report(sweep_dir: Path, finished_points) -> dict:
    """The report's JSON equals the independent numbers, its Markdown shows them as written out in
    expected_cells, its PNGs exist."""
    from launch.report import COLUMNS, PLOTS

    report = json.loads((sweep_dir / "report.json").read_text())
    rows = {row["point"]: row for row in report["rows"]}
    table = markdown_rows((sweep_dir / "report.md").read_text())
    assert report["columns"] == list(COLUMNS) and table["point"][:len(COLUMNS)] == list(COLUMNS)
    for point in finished_points:
        row = rows[point]
        assert row["status"] == "finished", row
        expected = expected_row(sweep_dir / point)
        for key, value in expected.items():
            assert row[key] == value, (point, key, row[key], value)
        assert table[point][:len(COLUMNS)] == expected_cells(point, expected)
    for name in PLOTS:
        assert (sweep_dir / name).stat().st_size > 1000, name
        assert (sweep_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return rows
