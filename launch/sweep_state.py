"""The state of a sweep, typed: its plan and each point's progress, as `sweep.json` in the sweep folder.

The sweep driver (launch/sweep.py) writes it after every point; the report (launch/report.py) reads it.
Every write is atomic, so a killed sweep leaves the last complete state.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from common.atomic import atomic_write

STATE_FILE = "sweep.json"
STATUSES = ("pending", "submitted", "finished", "failed")


@dataclass
class PointRun:
    name: str  # the run folder's name inside the sweep folder
    overrides: List[str]  # every `python -m train` override of the point, the sweep's own last
    status: str = "pending"  # pending | submitted | finished | failed
    reason: Optional[str] = None  # why it failed (the exception line of its log, or why it cannot run)
    attempts: int = 0
    seconds: float = 0.0  # wall time of its attempts
    adjustment: Optional[Dict[str, object]] = None  # --match: launch.match.Adjustment.to_dict()
    config: Optional[Dict[str, object]] = None  # the composed training config (None: it does not compose)
    point: Optional[str] = None  # the point this run belongs to (None: the run is the point, one seed)
    seed: Optional[int] = None  # its trainer.seed, when the sweep runs several
    rung: Optional[str] = None  # its size on the --scaling ladder

    @property
    def group(self) -> str:
        """The report row it counts towards: the point, at its rung."""
        point = self.point or self.name
        return point if self.rung is None else f"{point}.{self.rung}"

    def fail(self, reason: str) -> None:
        self.status, self.reason = "failed", reason

    def succeed(self) -> None:
        self.status, self.reason = "finished", None


@dataclass
class SweepState:
    name: str  # W&B group and the default folder name
    description: str
    command: str  # the command line that planned it
    budget: str  # data, seed and token budget every point shares (a re-run must keep it)
    match: str  # none | params | active | nonembedding | flops
    reference: str  # the first point: what --match compares with
    sweep_dir: str
    points: List[PointRun] = field(default_factory=list)
    seeds: int = 1  # runs per point
    rungs: List[str] = field(default_factory=list)  # --scaling: the ladder's rung names, smallest first

    def save(self) -> None:
        atomic_write(Path(self.sweep_dir) / STATE_FILE, json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, sweep_dir: Path) -> "SweepState":
        raw = json.loads((Path(sweep_dir) / STATE_FILE).read_text())
        raw["points"] = [PointRun(**point) for point in raw["points"]]
        return cls(**{**raw, "sweep_dir": str(sweep_dir)})
