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

With several seeds a point's row is its runs together (the runs are in report.json's `runs`): the mean
of the final losses, the sample standard deviation and the 95% t-interval of the final validation loss,
and a verdict against the first point (Welch's two-sided t-test at 5%: better / worse / indistinguishable;
launch/lab_stats.py). The curves are the seeds' mean. With --scaling each point has a row per rung (named
<point>.<rung>) and a power law loss = a C^-b fitted to its mean final validation losses against the
training compute C = FLOPs/token x tokens (scaling.png).

Files (each written to a temporary name, then renamed): report.md, report.json, val_loss_vs_tokens.png,
val_loss_vs_flops.png, throughput.png, cache_vs_context.png, and with --scaling scaling.png.
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
from launch.lab_stats import ALPHA, fit_power_law, interval95, mean, sample_sd, verdict  # noqa: E402
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
SEED_COLUMNS = ("seeds", "val loss mean ± sd", "95% interval", "vs first (Welch p)")  # with several seeds
SCALING_PLOT = "scaling.png"


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


def planned_tokens(config: dict) -> int:
    return config["trainer"]["max_steps"] * config["trainer"]["global_batch_size"] * config["data"]["seq_len"]


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
        row["tokens"] = planned_tokens(config)
    return row


def group_row(runs: List[Dict[str, object]], group: str, point: PointRun) -> Dict[str, object]:
    """A point's row from its runs' rows (one per seed): the architecture of the first, the mean losses, the
    median throughput, the largest memory, the mean validation curve, and the spread of the final
    validation loss. One run: its row as it is."""
    if len(runs) == 1:
        return {**runs[0], "point": group, "group_point": point.point or point.name, "rung": point.rung}
    finished = [r for r in runs if r["status"] == "finished"]
    statuses = {r["status"] for r in runs}
    row = {key: runs[0].get(key) for key in ("total_params", "active_params", "train_flops_per_token",
                                              "cache_bytes_per_token_4k", "cache_bytes_per_token_32k",
                                              "cache_bytes_curve", "adjustment")}
    vals = [r["final_val_loss"] for r in finished if r.get("final_val_loss") is not None]
    trains = [r["final_train_loss"] for r in finished if r.get("final_train_loss") is not None]
    rates = [r["tokens_per_s"] for r in finished if r.get("tokens_per_s") is not None]
    curves = [r["val_curve"] for r in finished if r.get("val_curve")]
    same = curves and all([t for t, _ in c] == [t for t, _ in curves[0]] for c in curves)
    row.update({
        "point": group, "group_point": point.point or point.name, "rung": point.rung,
        "status": "finished" if statuses == {"finished"} else next(s for s in ("failed", "submitted", "pending", "finished")
                                                                    if s in statuses),
        "reason": next((r["reason"] for r in runs if r.get("reason")), None),
        "attempts": sum(r["attempts"] for r in runs), "seconds": sum(r["seconds"] for r in runs),
        "run_dir": None, "seeds_finished": len(finished), "seeds": len(runs),
        "final_train_loss": mean(trains) if trains else None,
        "final_val_loss": mean(vals) if vals else None,
        "val_losses": vals, "val_loss_sd": sample_sd(vals) if vals else None,
        "val_loss_ci95": list(interval95(vals)) if len(vals) > 1 else None,
        "tokens_per_s": statistics.median(rates) if rates else None,
        "peak_memory_gb": max((r["peak_memory_gb"] for r in finished if r.get("peak_memory_gb") is not None), default=None),
        "val_curve": [[t, mean([c[i][1] for c in curves])] for i, (t, _) in enumerate(curves[0])] if same else [],
        "val_curve_sd": [sample_sd([c[i][1] for c in curves]) for i in range(len(curves[0]))] if same and len(curves) > 1
        else [],
        "tokens": runs[0].get("tokens"),
    })
    return row


def compare(rows: List[Dict[str, object]]) -> None:
    """Each row's verdict against the first row of its rung (Welch's test on the final validation losses)."""
    first = {}
    for row in rows:
        reference = first.setdefault(row.get("rung"), row)
        if row is reference:
            row["verdict"], row["welch_p"] = "reference", None
            continue
        kind, test = verdict(row.get("val_losses") or [], reference.get("val_losses") or [])
        row["verdict"], row["welch_p"] = kind, None if test is None else test.p


def scaling_fits(rows: List[Dict[str, object]]) -> List[Dict[str, object]]:
    """Per point, the power law through its rungs' (compute, mean final validation loss)."""
    fits = []
    for point in dict.fromkeys(r["group_point"] for r in rows if r.get("rung") is not None):
        measured = [r for r in rows if r["group_point"] == point and r.get("final_val_loss") is not None
                    and r.get("train_flops_per_token") and r.get("tokens")]
        compute = [r["train_flops_per_token"] * r["tokens"] for r in measured]
        fit = fit_power_law(compute, [r["final_val_loss"] for r in measured])
        fits.append({"point": point, "rungs": [r["rung"] for r in measured], "compute": compute,
                     "val_loss": [r["final_val_loss"] for r in measured],
                     "val_loss_sd": [r.get("val_loss_sd") for r in measured],
                     "a": fit.a if fit else None, "b": fit.b if fit else None, "r2": fit.r2 if fit else None,
                     "loss_at_largest": fit(max(compute)) if fit else None})
    return fits


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
    if row["point"] == reference or row.get("verdict") == "reference":  # the first point (of its rung)
        return "reference"
    if adjustment is None:
        return "-"
    return (f"`{adjustment['key']}` {adjustment['before']} → {adjustment['after']} "
            f"({adjustment['value']:,}, {adjustment['error']:+.1%})")


def seed_cells(row: Dict[str, object]) -> List[str]:
    """The SEED_COLUMNS cells: finished/planned seeds, mean ± sd, the 95% interval, the verdict and its p."""
    sd, ci = row.get("val_loss_sd"), row.get("val_loss_ci95")
    spread = "-" if sd is None else f"{row['final_val_loss']:.4f} ± {sd:.4f}"
    test = row.get("verdict") or "-"
    if row.get("welch_p") is not None:
        test = f"{test} (p={row['welch_p']:.3f})"
    return [f"{row.get('seeds_finished', 0)}/{row.get('seeds', 1)}", spread,
            "-" if ci is None else f"[{ci[0]:.4f}, {ci[1]:.4f}]", test]


def markdown(state: SweepState, rows: List[Dict[str, object]], fits: List[Dict[str, object]]) -> str:
    matched, seeded = state.match != "none", state.seeds > 1
    header = list(COLUMNS) + (list(SEED_COLUMNS) if seeded else []) + ([f"matched {state.match}"] if matched else [])
    lines = [f"# Sweep `{state.name}`", ""]
    if state.description:
        lines += [state.description, ""]
    lines += [f"Command: `{state.command}`", "", f"Budget: {state.budget}", "",
              "| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * (len(header) - 2)]
    for row in rows:
        extra = (seed_cells(row) if seeded else []) + ([adjustment_cell(row, state.reference)] if matched else [])
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
    if seeded:
        lines += [f"With {state.seeds} seeds a point: losses are means over its finished seeds; `± sd` the sample "
                  "standard deviation of the final validation loss, the interval its mean's 95% t-interval, and the "
                  f"verdict Welch's two-sided t-test against the first point of the same size at p < {ALPHA} "
                  "(indistinguishable: the difference is within the seeds' noise).", ""]
    if fits:
        lines += ["## Loss against compute", "", "Power law loss = a · C^-b fitted by least squares on log-log to each "
                  "point's mean final validation loss at each size, C = training FLOPs/token × tokens.", "",
                  "| point | sizes | b | a | R² | fitted loss at the largest C |", "|---|---|---:|---:|---:|---:|"]
        for fit in fits:
            numbers = ["-"] * 4 if fit["b"] is None else [f"{fit['b']:.4f}", f"{fit['a']:.3f}", f"{fit['r2']:.3f}",
                                                          f"{fit['loss_at_largest']:.4f}"]
            lines.append(f"| {fit['point']} | {', '.join(fit['rungs'])} | " + " | ".join(numbers) + " |")
        lines += ["", f"![{SCALING_PLOT}]({SCALING_PLOT})", ""]
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
                line, = axes.plot(x, y, marker="o", markersize=3, label=row["point"])
                if row.get("val_curve_sd"):  # several seeds: the mean +- one standard deviation
                    sd = row["val_curve_sd"]
                    axes.fill_between(x, [v - d for v, d in zip(y, sd)], [v + d for v, d in zip(y, sd)],
                                      color=line.get_color(), alpha=0.2)
            axes.set_xlabel("training FLOPs" if scale_key else "tokens")
            axes.set_ylabel("validation loss" + (" (mean ± sd over seeds)" if any(r.get("val_curve_sd") for r in curves)
                                                 else ""))
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


def scaling_plot(path: Path, name: str, fits: List[Dict[str, object]]) -> None:
    def draw(axes):
        for fit in fits:
            sd = [s or 0.0 for s in fit["val_loss_sd"]]
            line = axes.errorbar(fit["compute"], fit["val_loss"], yerr=sd, fmt="o", markersize=4, capsize=3)
            if fit["b"] is not None:
                low, high = min(fit["compute"]), max(fit["compute"])
                xs = [low * (high / low) ** (i / 50) for i in range(51)]
                axes.plot(xs, [fit["a"] * x ** -fit["b"] for x in xs], color=line[0].get_color(),
                          label=f"{fit['point']}: {fit['a']:.2f} C^-{fit['b']:.4f}")
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel("training compute C (FLOPs)")
        axes.set_ylabel("final validation loss (mean ± sd)")

    plot(path, f"{name}: loss against compute, power-law fits", draw)


def write_report(sweep_dir: Path) -> Path:
    """Write report.md, report.json and the plots from sweep.json and the run folders; returns report.md."""
    state = SweepState.load(sweep_dir)
    runs = [point_row(point, sweep_dir) for point in state.points]
    groups = {}
    for point, run in zip(state.points, runs):
        groups.setdefault(point.group, (point, []))[1].append(run)
    rows = [group_row(members, group, point) for group, (point, members) in groups.items()]
    compare(rows)
    fits = scaling_fits(rows) if state.rungs else []
    report = {key: getattr(state, key) for key in ("name", "description", "command", "budget", "match", "seeds")}
    report.update(columns=list(COLUMNS), rows=rows, runs=runs, scaling=fits)
    atomic_write(sweep_dir / "report.json", json.dumps(report, indent=1) + "\n")
    atomic_write(sweep_dir / "report.md", markdown(state, rows, fits))
    plots(sweep_dir, state.name, rows)
    if fits:
        scaling_plot(sweep_dir / SCALING_PLOT, state.name, fits)
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
