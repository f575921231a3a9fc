"""loss.png of one run, from its metrics.jsonl: train and validation loss, the learning rate and, for DPO,
the reward accuracy and margin (training and held-out pairs).

The trainer draws it at the end of a run (LogMetrics); `python -m launch.report run=<run dir>` draws it at
any time, also while the run goes on. The PNG's metadata names its source: the metrics file, its number of
records and the last step.
"""

from pathlib import Path
from typing import Dict, List, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)

from common.atomic import atomic_write  # noqa: E402
from train.metrics import read_metrics  # noqa: E402
from train.run_folder import LOSS_PLOT, METRICS  # noqa: E402

# (y label, the metrics drawn in it): a panel is drawn when the run logged any of its metrics
PANELS = (
    ("loss", ("loss", "val_loss")),
    ("learning rate", ("lr",)),
    ("reward accuracy", ("reward_accuracy", "val_reward_accuracy")),
    ("reward margin", ("reward_margin", "val_reward_margin")),
)
LABELS = {"loss": "train", "val_loss": "validation", "lr": "lr", "reward_accuracy": "train",
          "val_reward_accuracy": "held out", "reward_margin": "train", "val_reward_margin": "held out"}

Curves = Dict[str, Tuple[List[int], List[float]]]


def run_curves(records: List[Dict[str, object]]) -> Curves:
    """{metric: (steps, values)} for every metric of PANELS the records hold."""
    curves: Curves = {}
    for record in records:
        for _, metrics in PANELS:
            for metric in metrics:
                if metric in record:
                    steps, values = curves.setdefault(metric, ([], []))
                    steps.append(int(record["step"]))
                    values.append(float(record[metric]))
    return curves


def plot_run(run_dir: Path) -> Tuple[Path, Curves]:
    """Draw run_dir/loss.png from run_dir/metrics.jsonl; returns its path and the curves drawn."""
    run_dir = Path(run_dir)
    source = run_dir / METRICS
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such file; is {run_dir} a run folder (out_dir/run_name) that has started?")
    records, _ = read_metrics(source)
    curves = run_curves(records)
    if not curves:
        raise ValueError(f"{source}: no losses logged yet; try again after the first trainer.log_every steps")
    panels = [(label, [m for m in metrics if m in curves]) for label, metrics in PANELS if any(m in curves for m in metrics)]
    figure, axes = plt.subplots(len(panels), 1, sharex=True, squeeze=False, figsize=(7, 1.2 + 2.2 * len(panels)), dpi=110)
    for ax, (label, metrics) in zip(axes[:, 0], panels):
        for metric in metrics:
            steps, values = curves[metric]
            held_out = metric.startswith("val_")
            ax.plot(steps, values, marker="o" if held_out else None, markersize=3, label=LABELS[metric])
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if len(metrics) > 1:
            ax.legend(fontsize=8)
    last_step = max(steps[-1] for steps, _ in curves.values())
    axes[-1, 0].set_xlabel("step")
    axes[0, 0].set_title(f"{run_dir.name}: step {last_step}")
    figure.tight_layout()
    path = run_dir / LOSS_PLOT
    metadata = {"Title": f"{run_dir.name} losses", "Source": f"{source.resolve()}: {len(records)} records, last step {last_step}"}
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", metadata=metadata))
    plt.close(figure)
    return path, curves
