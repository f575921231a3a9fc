"""What a sweep runs: named sweeps (configs/sweep/<name>.yaml), command-line axes, and the points they make.

A named sweep is a typed YAML file (`SweepConfig`): base overrides shared by every point and a list of
named points, each a list of Hydra overrides for `python -m train`. A misspelled key is an error naming
the file and the key. On the command line, a comma list in Hydra's sweep syntax
(`model.mixers.full.attention.num_kv_heads=1,2,4`, also `range(...)` and `choice(...)`) is an axis:
every named point runs with every combination of the axes' values.

Points change the architecture, never what makes the comparison fair: the data, the seed and the token
budget (`PROTECTED`) are the same for every point and belong in the base overrides. Seeds are the sweep's:
every point runs with `seeds` of them (`--seeds`; trainer.seed, trainer.seed + 1, ...). With `--scaling`
every point also runs at each size of the sweep's `scaling` ladder (its rungs' overrides; DEFAULT_SCALING
when the YAML has none).

Mixers and feed-forwards that a preset's tables do not hold are added with a config group option from
configs/sweep/mixer/ or configs/sweep/ffn/ (`+sweep/mixer@model.mixers.mla=mla`): Hydra merges a group
option into the table, while a plain `model.mixers.mla.kind=mla` override cannot create a typed entry.
"""

import re
from dataclasses import dataclass, field
from itertools import product
from typing import List, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from train.config import TrainConfig, compose_train_config
from common.compose import composing
from common.paths import CONFIGS_DIR

SWEEPS_DIR = CONFIGS_DIR / "sweep"
MATCH_KINDS = ("none", "params", "active", "nonembedding", "flops")
# Keys only the base overrides may set (same data, seed and token budget), and keys the driver sets.
PROTECTED = ("data.", "trainer.seed", "trainer.max_steps", "trainer.global_batch_size", "stage")
DRIVER_KEYS = ("out_dir", "run_name", "logging.wandb.group")  # (and trainer.seed, with more than one seed)
POINT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
RESERVED_NAMES = ("logs",)  # folders of the sweep directory that are not run folders


@dataclass
class PointConfig:
    name: str = MISSING  # the run folder's name: letters, digits, _ . -
    overrides: List[str] = field(default_factory=list)  # Hydra overrides for `python -m train`
    knob: Optional[str] = None  # the size key --match adjusts at this point; default: the sweep's knob


@dataclass
class RungConfig:
    name: str = MISSING  # a suffix of the run folders: letters, digits, _ . -
    overrides: List[str] = field(default_factory=list)  # what makes the model this size


@dataclass
class SweepConfig:
    description: str = ""
    base: List[str] = field(default_factory=list)  # overrides of every point, before the command line's
    match: str = "none"  # default of --match: none | params | active | nonembedding | flops
    knob: Optional[str] = None  # integer model.* key that --match adjusts, e.g. model.ffns.swiglu.hidden_dim
    multiple_of: int = 8  # the knob's values are multiples of this
    seeds: int = 3  # default of --seeds: runs per point, to tell a difference from seed noise
    scaling: List[RungConfig] = field(default_factory=list)  # --scaling's sizes (default: DEFAULT_SCALING)
    points: List[PointConfig] = field(default_factory=list)


# --scaling's ladder for the sweeps on the tiny Llama (dim 64): the width from 32 to 128, the SwiGLU at ~2.75 x
# dim; with --match flops (the default of --scaling where the sweep has a knob) the points of a rung train at
# the first point's FLOPs.
DEFAULT_SCALING = [RungConfig(f"d{d}", [f"model.dim={d}", f"model.ffns.swiglu.hidden_dim={f}"])
                   for d, f in ((32, 88), (64, 176), (96, 264), (128, 352))]


@dataclass
class Point:
    name: str
    overrides: List[str]  # the point's own overrides (named point, then axis values)
    knob: Optional[str]


def available_sweeps() -> List[str]:
    return sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))


def load_sweep(name: str) -> SweepConfig:
    path = SWEEPS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"sweep={name}: there is no {path}; available: {', '.join(available_sweeps())}")
    raw = OmegaConf.load(path)
    if not isinstance(raw, DictConfig):
        raise ValueError(f"{path}: a sweep is a mapping (description, base, match, knob, multiple_of, points)")
    points, rungs = raw.pop("points", []), raw.pop("scaling", [])
    sweep = typed(SweepConfig, raw, str(path))
    sweep.points = [typed(PointConfig, point, f"{path}: points[{i}]") for i, point in enumerate(points)]
    sweep.scaling = [typed(RungConfig, rung, f"{path}: scaling[{i}]") for i, rung in enumerate(rungs)]
    if sweep.seeds < 1:
        raise ValueError(f"{path}: seeds={sweep.seeds} must be at least 1")
    for rung in sweep.scaling:
        check_point(rung.name, rung.overrides, f"{path}: scaling rung {rung.name!r}")
    if sweep.match not in MATCH_KINDS:
        raise ValueError(f"{path}: match={sweep.match!r}; use one of {', '.join(MATCH_KINDS)}")
    for override in parse(sweep.base, f"{path}: base"):
        if target_key(override) in DRIVER_KEYS:
            raise ValueError(f"{path}: base sets {target_key(override)}, which the sweep sets (use --out and --name)")
    names = [p.name for p in sweep.points]
    for point in sweep.points:
        check_point(point.name, point.overrides, f"{path}: point {point.name!r}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{path}: point names must be unique; repeated: {duplicates}")
    return sweep


def typed(schema, node, where: str):
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))
    except OmegaConfBaseException as e:
        first_line = str(e).splitlines()[0]
        raise ValueError(f"{where}: {first_line} (the keys of launch/sweep_config.py:{schema.__name__})") from None


def check_point(name: str, overrides: List[str], where: str) -> None:
    if not POINT_NAME.fullmatch(name) or name in RESERVED_NAMES:
        raise ValueError(f"{where}: the name must be letters, digits, _ . - (not {', '.join(RESERVED_NAMES)})")
    for override in parse(overrides, where):
        key = target_key(override)
        if key.startswith(PROTECTED) or key in DRIVER_KEYS:
            raise ValueError(f"{where} sets {key}: every point trains on the same data, seed and token budget, so "
                             f"{', '.join(PROTECTED)} go in the base overrides ({', '.join(DRIVER_KEYS)} are the sweep's)")


def parse(overrides: List[str], where: str):
    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except Exception as e:  # Hydra's OverrideParseException, with the grammar's message
        raise ValueError(f"{where}: {e}") from None


def target_key(override) -> str:
    """The config key an override writes: a group option's package (`+sweep/mixer@model.mixers.x=...`), else its key."""
    return override.package or override.key_or_group


def split_command_line(items: List[str]):
    """Base overrides and axes [(key, [value strings])]: a comma list, range() or choice() is an axis."""
    base, axes = [], []
    for override in parse(items, "command line"):
        if target_key(override) in DRIVER_KEYS:
            raise ValueError(f"{override.input_line}: the sweep sets {target_key(override)} (use --out and --name)")
        if override.is_sweep_override():
            axes.append((override.get_key_element(), list(override.sweep_string_iterator())))
        else:
            base.append(override.input_line)
    return base, axes


def axis_label(key: str, value: str) -> str:
    leaf = re.sub(r"^[+~]+", "", key).split("@")[-1].split(".")[-1].split("/")[-1]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{leaf}-{value}").strip("-")


def expand(sweep: Optional[SweepConfig], selected: Optional[List[str]], axes) -> List[Point]:
    """Named points (all, or the `selected` ones in that order) times every combination of the axes."""
    named = [Point("", [], sweep.knob if sweep else None)]
    if sweep is not None:
        by_name = {p.name: p for p in sweep.points}
        unknown = [n for n in selected or [] if n not in by_name]
        if unknown:
            raise ValueError(f"--points {','.join(unknown)}: not in the sweep; its points are {', '.join(by_name)}")
        chosen = [by_name[n] for n in selected] if selected else sweep.points
        named = [Point(p.name, list(p.overrides), p.knob or sweep.knob) for p in chosen]
    elif selected:
        raise ValueError("--points selects named points: give a named sweep with sweep=<name>")
    points = []
    for point in named:
        for values in product(*[[(key, v) for v in vs] for key, vs in axes]):
            labels = [point.name] if point.name else []
            labels += [axis_label(key, value) for key, value in values]
            name = "_".join(labels) or "default"
            overrides = point.overrides + [f"{key}={value}" for key, value in values]
            check_point(name, overrides, f"point {name!r}")
            points.append(Point(name, overrides, point.knob))
    return points


class Composer:
    """Composes `python -m train`'s config in this process, exactly as the trainer will."""

    def __enter__(self):
        self.context = composing()
        self.context.__enter__()
        return self

    def __exit__(self, *exc):
        self.context.__exit__(*exc)

    def __call__(self, overrides: List[str]) -> TrainConfig:
        try:
            return compose_train_config(overrides)
        except Exception as e:  # Hydra's composition errors keep the useful part in the cause
            cause = f" ({e.__cause__})" if e.__cause__ and str(e.__cause__) not in str(e) else ""
            raise ValueError(f"{e}{cause}".replace("\n", " ")) from None
