"""Plots and reports from run folders, at any time (also while a run goes on):

    python -m launch.report run=outputs/runs/pretrain      # loss.png of one run (train/plots.py)
    python -m launch.report sweep=outputs/sweeps/attention # a sweep's report (below); also write_report(Path(...))

The report of a sweep, from its run folders: a Markdown table, the same data as JSON, and plots; it reads
sweep.json and <point>/{config.yaml,metrics.jsonl}.

Architecture columns come from the inspector (train.model.summary.summarize) on the point's resolved model
config, the run folder's config.yaml (or, for a point that never started, the config planned in
sweep.json): total and active parameters, training FLOPs per token at the training context, and the
KV-cache / recurrent-state bytes per token of one sequence at 4k and 32k tokens (bf16; a fixed-size state
is spread over the context). Training columns come from metrics.jsonl: the last train and validation
losses, the median tokens/s of the logged intervals after the first (which holds the start-up), and the
largest memory reading (CUDA: peak allocated; CPU: rank 0's peak resident memory).

Files (each written to a temporary name, then renamed): report.md, report.json, val_loss_vs_tokens.png,
val_loss_vs_flops.png, throughput.png, cache_vs_context.png.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)
from matplotlib.ticker import FuncFormatter  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from common.atomic import atomic_write  # noqa: E402
from common.numbers import count, nbytes  # noqa: E402
from launch.sweep_state import PointRun, SweepState  # noqa: E402
from train.model.config import to_model_config  # noqa: E402
from train.model.summary import summarize  # noqa: E402
from train.plots import plot_run  # noqa: E402
from train.run_folder import is_finished  # noqa: E402

CACHE_DTYPE = "bf16"
CACHE_CONTEXTS = (4096, 32768)  # the table's columns
CURVE_CONTEXTS = tuple(2**k for k in range(8, 18))  # 256 .. 131072 tokens, the cache plot
PLOTS = ("val_loss_vs_tokens.png", "val_loss_vs_flops.png", "throughput.png", "cache_vs_context.png")
COLUMNS = ("point", "status", "total params", "active params", "train FLOPs/token", "cache/token @4k",
           "cache/token @32k", "train loss", "val loss", "tokens/s", "peak memory")


def read_metrics(run_dir: Path) -> List[Dict[str, float]]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def architecture(train_config: dict) -> Dict[str, object]:
    """Inspector numbers of a resolved train config (a dict of train.config.TrainConfig)."""
    model = to_model_config(train_config["model"])
    seq_len = train_config["data"]["seq_len"]
    at = {context: summarize(model, context, CACHE_DTYPE).kv_bytes_total for context in CURVE_CONTEXTS + CACHE_CONTEXTS}
    train = summarize(model, seq_len, CACHE_DTYPE)
    return {
        "total_params": train.params_total,
        "active_params": train.params_active,
        "train_flops_per_token": train.flops_per_token,
        **{f"cache_bytes_per_token_{c // 1024}k": at[c] / c for c in CACHE_CONTEXTS},
        "cache_bytes_curve": [[c, at[c]] for c in CURVE_CONTEXTS],
    }


def training(records: List[Dict[str, float]], tokens_per_step: int) -> Dict[str, object]:
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val_loss" in r]
    rates = [r["tokens_per_s"] for r in train[1:] or train]
    return {
        "steps": train[-1]["step"] if train else 0,
        "final_train_loss": train[-1]["loss"] if train else None,
        "final_val_loss": val[-1]["val_loss"] if val else None,
        "tokens_per_s": statistics.median(rates) if rates else None,
        "peak_memory_gb": max(r["memory_gb"] for r in train) if train else None,
        "val_curve": [[r["step"] * tokens_per_step, r["val_loss"]] for r in val],  # [tokens, val loss]
    }


def point_row(point: PointRun, sweep_dir: Path) -> Dict[str, object]:
    run_dir = sweep_dir / point.name
    status = "finished" if is_finished(run_dir) else point.status
    config = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml")) if (run_dir / "config.yaml").is_file() \
        else point.config
    row = {"point": point.name, "status": status, "reason": None if status == "finished" else point.reason,
           "attempts": point.attempts, "seconds": point.seconds, "adjustment": point.adjustment, "run_dir": str(run_dir)}
    if config is not None:
        row.update(architecture(config))
        tokens_per_step = config["trainer"]["global_batch_size"] * config["data"]["seq_len"]
        row.update(training(read_metrics(run_dir), tokens_per_step))
    return row


def _count(n: Optional[float]) -> str:
    return "-" if n is None else count(n)


def _bytes(n: Optional[float]) -> str:
    return "-" if n is None else nbytes(n)


def _number(n: Optional[float], digits: int) -> str:
    return "-" if n is None else f"{n:,.{digits}f}"


def cells(row: Dict[str, object]) -> List[str]:
    """The Markdown cells of a row, in COLUMNS order."""
    return [row["point"], row["status"], _count(row.get("total_params")), _count(row.get("active_params")),
            _count(row.get("train_flops_per_token")), _bytes(row.get("cache_bytes_per_token_4k")),
            _bytes(row.get("cache_bytes_per_token_32k")), _number(row.get("final_train_loss"), 4),
            _number(row.get("final_val_loss"), 4), _number(row.get("tokens_per_s"), 0),
            "-" if row.get("peak_memory_gb") is None else f"{row['peak_memory_gb']:.2f} GB"]


def adjustment_cell(row: Dict[str, object], reference: str) -> str:
    adjustment = row["adjustment"]
    if row["point"] == reference:
        return "reference"
    if adjustment is None:
        return "-"
    return (f"`{adjustment['key']}` {adjustment['before']} → {adjustment['after']} "
            f"({adjustment['value']:,}, {adjustment['error']:+.1%})")


def markdown(state: SweepState, rows: List[Dict[str, object]]) -> str:
    matched = state.match != "none"
    header = list(COLUMNS) + ([f"matched {state.match}"] if matched else [])
    lines = [f"# Sweep `{state.name}`", ""]
    if state.description:
        lines += [state.description, ""]
    lines += [f"Command: `{state.command}`", "", f"Budget: {state.budget}", "",
              "| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * (len(header) - 2)]
    for row in rows:
        extra = [adjustment_cell(row, state.reference)] if matched else []
        lines.append("| " + " | ".join(cells(row) + extra) + " |")
    problems = [row for row in rows if row["status"] != "finished"]
    if problems:
        lines.append("")
        for row in problems:
            attempts = f" after {row['attempts']} attempt(s)" if row["attempts"] else ""
            lines.append(f"- `{row['point']}` {row['status']}{attempts}" + (f": {row['reason']}" if row["reason"] else ""))
    lines += ["", f"Parameters, FLOPs (training, per token at the training context, PaLM convention) and cache "
                  f"({CACHE_DTYPE}, one sequence, fixed-size state spread over the context) from the inspector; "
                  "losses are the last logged, tokens/s the median of the logged intervals after the first, "
                  "peak memory the largest reading (CPU: rank 0's resident memory).", ""]
    lines += [f"![{name}]({name})" for name in PLOTS]
    return "\n".join(lines) + "\n"


def plot(path: Path, title: str, draw) -> None:
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=110)
    draw(axes)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=8)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
    plt.close(figure)


def plots(sweep_dir: Path, name: str, rows: List[Dict[str, object]]) -> None:
    curves = [row for row in rows if row.get("val_curve")]

    def loss_against(scale_key: Optional[str]):
        def draw(axes):
            for row in curves:
                scale = row[scale_key] if scale_key else 1
                x, y = zip(*[(tokens * scale, loss) for tokens, loss in row["val_curve"]])
                axes.plot(x, y, marker="o", markersize=3, label=row["point"])
            axes.set_xlabel("training FLOPs" if scale_key else "tokens")
            axes.set_ylabel("validation loss")
        return draw

    def throughput(axes):
        measured = [row for row in rows if row.get("tokens_per_s")]
        axes.barh([row["point"] for row in measured], [row["tokens_per_s"] for row in measured])
        axes.invert_yaxis()
        axes.set_xlabel("tokens/s (all ranks)")

    def cache(axes):
        for row in rows:
            if row.get("cache_bytes_curve"):
                x, y = zip(*row["cache_bytes_curve"])
                axes.loglog(x, y, marker="o", markersize=3, label=row["point"], base=2)
        axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: _bytes(value)))
        axes.set_xlabel("context (tokens)")
        axes.set_ylabel(f"KV cache + state of one sequence ({CACHE_DTYPE})")

    plot(sweep_dir / PLOTS[0], f"{name}: validation loss vs tokens", loss_against(None))
    plot(sweep_dir / PLOTS[1], f"{name}: validation loss vs training FLOPs", loss_against("train_flops_per_token"))
    plot(sweep_dir / PLOTS[2], f"{name}: training throughput", throughput)
    plot(sweep_dir / PLOTS[3], f"{name}: cache memory vs context", cache)


def write_report(sweep_dir: Path) -> Path:
    """Write report.md, report.json and the plots from sweep.json and the run folders; returns report.md."""
    state = SweepState.load(sweep_dir)
    rows = [point_row(point, sweep_dir) for point in state.points]
    report = {key: getattr(state, key) for key in ("name", "description", "command", "budget", "match")}
    report.update(columns=list(COLUMNS), rows=rows)
    atomic_write(sweep_dir / "report.json", json.dumps(report, indent=1) + "\n")
    atomic_write(sweep_dir / "report.md", markdown(state, rows))
    plots(sweep_dir, state.name, rows)
    return sweep_dir / "report.md"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", metavar="run=DIR | sweep=DIR",
                        help="run=<run folder>: draw its loss.png; sweep=<sweep folder>: write its report and plots")
    kind, _, folder = parser.parse_args(argv).target.partition("=")
    if kind not in ("run", "sweep") or not folder:
        parser.error("give run=<run folder> or sweep=<sweep folder>")
    try:
        if kind == "run":
            path, curves = plot_run(Path(folder))
            print(f"{path.resolve()}: " + ", ".join(f"{name} ({len(steps)} points to step {steps[-1]})"
                                                    for name, (steps, _) in curves.items()))
        else:
            print(write_report(Path(folder)).read_text())
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: {error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
