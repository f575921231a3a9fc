"""Architecture lab: one pre-training run per configuration, then a report of them side by side.

    python -m launch.sweep sweep=attention                          # every point of configs/sweep/attention.yaml
    python -m launch.sweep sweep=attention --points mha,gqa,mla trainer.max_steps=100
    python -m launch.sweep model.mixers.full.attention.num_kv_heads=1,2,4 --name kv_heads   # Hydra's sweep syntax
    python -m launch.sweep sweep=ffn --match params                 # sizes adjusted to the first point's
    python -m launch.sweep sweep=attention --launcher slurm --cluster generic_gpu   # submit, then later:
    python -m launch.sweep sweep=attention --report-only
    python -m launch.sweep --list                                   # the named sweeps
    python -m launch.sweep sweep=residual --seeds 5                 # 5 seeds a point: mean, sd, 95% interval, Welch
    python -m launch.sweep sweep=norm --scaling --seeds 2           # every point at 4 widths: loss vs compute fits

Every point is its own `python -m train` (Hydra's multirun inside one torchrun cannot re-create the
process group): locally one elastic torchrun after the other (launch/local.py, `--nproc` ranks), or one
SLURM job each (`python -m launch.slurm <overrides> cluster=<name>`). Every point trains on the same
data, seeds and token budget, into <sweep dir>/<point>/ (with several seeds <point>-seed<s>/; with
--scaling <point>.<rung>[-seed<s>]/) (default sweep dir: outputs/sweeps/<name>), and
logs to W&B in the group <name> when the base overrides turn W&B on (logging.wandb.mode=online|offline).

`--match params|active|nonembedding|flops` adjusts one size knob per point (the sweep's `knob:` or
`--knob`) so that its size equals the first point's within `--tolerance` (launch/match.py); the
adjustment is in the report. A point that fails is tried again `--retries` times (the trainer resumes
from its checkpoint) and then marked failed in the report with the reason from its log; the sweep goes
on. A point whose run folder holds the final model is skipped on re-run. sweep.json in the sweep dir
records the plan and each point's status (launch/sweep_state.py); the report is launch/report.py's.
"""

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from omegaconf import OmegaConf

from common.processes import tee, threads_per_process
from launch.local import torchrun_command
from launch.match import match_knob, measure
from launch.report import architecture, write_report
from launch.sweep_config import (DEFAULT_SCALING, MATCH_KINDS, Composer, Point, available_sweeps, axis_label, expand,
                                 load_sweep, split_command_line)
from launch.sweep_state import PointRun, SweepState
from train.model.summary import summarize
from train.run_folder import is_finished

ERROR_LINE = re.compile(r"^(?:\[rank\d+\]:\s*)?((?:[\w.]+\.)?\w*(?:Error|Exception|Interrupt)\b.*|error: .*)$")
SIGNAL_LINE = re.compile(r"Signal \d+ \(\w+\) received by PID \d+")  # torchrun's summary of a killed rank


@dataclass
class SweepOptions:
    """The command line beyond the training overrides."""

    sweep: Optional[str]  # a named sweep (configs/sweep/<name>.yaml)
    points: Optional[List[str]]  # its points to run, in this order (default all)
    name: Optional[str]
    out: Optional[str]
    nproc: int
    retries: int
    match: Optional[str]
    knob: Optional[str]
    tolerance: float
    launcher: str  # local | slurm
    cluster: Optional[str]
    nodes: Optional[int]
    dry_run: bool
    resubmit: bool
    report_only: bool
    list: bool
    seeds: Optional[int] = None  # runs per point (default: the named sweep's seeds, 3; else 1)
    scaling: bool = False  # every point at each size of the sweep's scaling ladder

    def sweep_dir(self, name: str) -> Path:
        return Path(self.out or Path("outputs") / "sweeps" / name).resolve()


def parse_args(argv: Optional[List[str]]):
    """(SweepOptions, the training overrides and axes)."""
    parser = argparse.ArgumentParser(prog="python -m launch.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=lambda s: s.split(","), help="named points to run, comma-separated (default all)")
    parser.add_argument("--name", help="W&B group and default folder (default: the named sweep, or the axes)")
    parser.add_argument("--out", help="sweep folder (default: outputs/sweeps/<name>)")
    parser.add_argument("--nproc", type=int, default=2, help="local processes (ranks) per point")
    parser.add_argument("--retries", type=int, default=1, help="attempts after a failed one, per point")
    parser.add_argument("--match", choices=MATCH_KINDS,
                        help="match every point's size to the first's (default: the sweep's, else none)")
    parser.add_argument("--knob", help="the integer model key --match adjusts, for every point (default: the sweep's)")
    parser.add_argument("--tolerance", type=float, default=0.05, help="largest relative size mismatch --match accepts")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local")
    parser.add_argument("--cluster", help="slurm: the cluster config for launch.slurm (cluster=<name>)")
    parser.add_argument("--nodes", type=int, help="slurm: nodes per point (cluster.nodes=N)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan and commands, run nothing (slurm: launch.slurm --dry-run)")
    parser.add_argument("--resubmit", action="store_true", help="slurm: submit again points that were submitted before")
    parser.add_argument("--report-only", action="store_true", help="write the report from what finished; run nothing")
    parser.add_argument("--list", action="store_true", help="list the named sweeps")
    parser.add_argument("--seeds", type=int, help="runs per point with trainer.seed, +1, ... (default: a named "
                        "sweep's seeds, 3; else 1); the report gives mean, sd, 95%% interval and a Welch test")
    parser.add_argument("--scaling", action="store_true", help="run every point at each size of the sweep's "
                        "scaling ladder (matched by FLOPs with the sweep's knob) and fit loss against compute")
    parser.add_argument("-m", "--multirun", action="store_true", help="accepted out of Hydra habit: comma lists sweep")
    args, rest = parser.parse_known_args(argv)
    unknown = [item for item in rest if item.startswith("-")]
    if unknown:
        parser.error(f"unknown options {unknown}")
    sweep = next((item.removeprefix("sweep=") for item in rest if item.startswith("sweep=")), None)
    items = [item for item in rest if not item.startswith("sweep=")]
    if args.launcher == "slurm" and not args.cluster and not args.report_only:
        parser.error("--launcher slurm needs --cluster NAME")
    if args.seeds is not None and args.seeds < 1:
        parser.error(f"--seeds {args.seeds}: at least 1")
    options = SweepOptions(sweep, args.points, args.name, args.out, args.nproc, args.retries, args.match, args.knob,
                           args.tolerance, args.launcher, args.cluster, args.nodes, args.dry_run, args.resubmit,
                           args.report_only, args.list, args.seeds, args.scaling)
    return options, items


def plan(options: SweepOptions, items: List[str], command: str) -> SweepState:
    """The runs: every point (at every --scaling rung, with every seed), their full overrides, composed
    configs and (with --match) size adjustments, matched within each rung to its first point."""
    sweep = load_sweep(options.sweep) if options.sweep else None
    cli_base, axes = split_command_line(items)
    points = expand(sweep, options.points, axes)
    name = options.name or options.sweep or "-".join(axis_label(key, "") for key, _ in axes) or "sweep"
    sweep_dir = options.sweep_dir(name)
    match = options.match or (sweep.match if sweep else "none")
    seeds = options.seeds or (sweep.seeds if sweep else 1)
    rungs = [None]
    if options.scaling:
        rungs = (sweep.scaling if sweep and sweep.scaling else None) or DEFAULT_SCALING
        if match == "none" and (options.knob or any(p.knob for p in points)):
            match = "flops"  # the sizes of a rung matched by training FLOPs
    base = (sweep.base if sweep else []) + cli_base

    def driver(run: str) -> List[str]:  # the sweep's own keys, last
        return [f"out_dir={sweep_dir}", f"run_name={run}", f"logging.wandb.group={name}"]

    runs, first = [], None
    with Composer() as compose:
        for rung in rungs:
            labels = [p.name if rung is None else f"{p.name}.{rung.name}" for p in points]
            cells = [PointRun(label, base + (rung.overrides if rung else []) + p.overrides + driver(label))
                     for label, p in zip(labels, points)]
            configs = {}
            for run in cells:
                try:
                    configs[run.name] = compose(run.overrides)
                    run.config = OmegaConf.to_container(OmegaConf.structured(configs[run.name]))
                except ValueError as e:
                    run.fail(f"invalid overrides: {e}")
            first = first or next(iter(configs.values()), None)
            if match != "none":
                reference = configs.get(cells[0].name)
                if reference is None:
                    raise SystemExit(f"error: --match {match} compares with the first point, {cells[0].name}, which "
                                     f"does not compose: {cells[0].reason}")
                target = measure(summarize(reference.model, reference.data.seq_len), match)
                for run, point in zip(cells[1:], points[1:]):
                    if run.config is not None:
                        match_size(run, point, configs[run.name], match, target, options,
                                   sweep.multiple_of if sweep else 8)
                        if run.status != "failed":  # the matched size, before the sweep's own keys
                            matched = f"{run.adjustment['key']}={run.adjustment['after']}"
                            run.overrides = run.overrides[:-len(driver(""))] + [matched] + driver(run.name)
                            run.config = OmegaConf.to_container(OmegaConf.structured(compose(run.overrides)))
            for run, point in zip(cells, points):
                runs += seeded(run, point.name, rung.name if rung else None, seeds, driver)
    base_seed = first.trainer.seed if first is not None else 0
    seed_text = f"seed {base_seed}" if seeds == 1 else f"seeds {base_seed}..{base_seed + seeds - 1}"
    budget = "unknown (no point composes)" if first is None else (
        f"{first.trainer.max_steps} steps x {first.trainer.global_batch_size} sequences x {first.data.seq_len} tokens = "
        f"{first.trainer.max_steps * first.trainer.global_batch_size * first.data.seq_len:,} tokens per point; "
        f"data {first.data.path}; {seed_text}")
    return SweepState(name, sweep.description if sweep else "", command, budget, match, points[0].name,
                      str(sweep_dir), runs, seeds, [r.name for r in rungs if r is not None])


def seeded(run: PointRun, point: str, rung: Optional[str], seeds: int, driver) -> List[PointRun]:
    """The point's runs: itself with one seed (its folder the point's name), else one per seed, named
    <point>-seed<s>, with trainer.seed = the composed seed + 0 .. seeds - 1."""
    run.point, run.rung = point, rung
    if seeds == 1:
        return [run]
    base_seed = run.config["trainer"]["seed"] if run.config is not None else 0
    out = []
    for seed in range(base_seed, base_seed + seeds):
        name = f"{run.name}-seed{seed}"
        copy = PointRun(name, run.overrides[:-len(driver(""))] + [f"trainer.seed={seed}"] + driver(name), run.status,
                        run.reason, adjustment=run.adjustment, point=point, seed=seed, rung=rung)
        if run.config is not None:
            copy.config = {**run.config, "trainer": {**run.config["trainer"], "seed": seed}, "run_name": name}
        out.append(copy)
    return out


def match_size(run: PointRun, point: Point, config, match: str, target: int, options: SweepOptions,
               multiple_of: int) -> None:
    """Find the point's knob value whose `match` measure equals the reference's `target` (or fail the point)."""
    knob = options.knob or point.knob
    if not knob:
        run.fail(f"--match {match} needs a size knob: set knob: in the sweep's YAML (for every point or this one) "
                 f"or pass --knob KEY")
        return
    try:
        adjustment = match_knob(config.model, knob, match, target, config.data.seq_len, multiple_of)
    except ValueError as e:
        run.fail(str(e))
        return
    run.adjustment = adjustment.to_dict()
    if abs(adjustment.error) > options.tolerance:
        run.fail(f"--match {match}: {knob}={adjustment.after} comes closest, {adjustment.value:,} vs {target:,} "
                 f"({adjustment.error:+.1%}, over --tolerance {options.tolerance:g}); pick another knob")


def reconcile(state: SweepState) -> None:
    """Merge with an earlier sweep.json: its other points stay in the report. The budget must be the same,
    and a finished point must have been run with the same overrides, or the report would compare apples
    and oranges."""
    sweep_dir = Path(state.sweep_dir)
    if not (sweep_dir / "sweep.json").is_file():
        return
    earlier_state = SweepState.load(sweep_dir)
    if earlier_state.budget != state.budget:
        raise SystemExit(f"error: {sweep_dir} holds a sweep with another budget ({earlier_state.budget}; now: "
                         f"{state.budget}); its points would not compare: use another --out")
    earlier = {p.name: p for p in earlier_state.points}
    planned = {p.name for p in state.points}
    for run in state.points:
        before = earlier.get(run.name)
        if before is None:
            continue
        if is_finished(sweep_dir / run.name) and before.overrides != run.overrides:
            changed = sorted(set(before.overrides) ^ set(run.overrides))
            raise SystemExit(f"error: point {run.name} in {sweep_dir} finished with other overrides (differing: "
                             f"{changed}); re-run with the same arguments, or use another --out")
        if before.status == "submitted" and run.status == "pending":
            run.status = "submitted"
    state.points = [p for p in earlier.values() if p.name not in planned] + state.points


def failure_reason(output: str, returncode: int) -> str:
    """The last exception or error line of a failed attempt (not torchrun's ChildFailedError wrapper), else
    the signal that killed a rank, else the exit status and the last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        found = ERROR_LINE.match(line)
        if found and "ChildFailedError" not in line:
            return found.group(1)
    killed = [SIGNAL_LINE.search(line) for line in lines]
    killed = [found.group(0) for found in killed if found]
    if killed:
        return f"killed: {killed[0]}"
    return f"exit status {returncode}; last line: {lines[-1] if lines else 'no output'}"


def run_local(run: PointRun, sweep_dir: Path, nproc: int, retries: int) -> None:
    log = sweep_dir / "logs" / f"{run.name}.log"
    env = dict(os.environ, OMP_NUM_THREADS=threads_per_process(nproc))
    started = time.time()
    for attempt in range(1, retries + 2):
        run.attempts = attempt
        returncode, output = tee(torchrun_command(nproc, 0, "train", run.overrides), log, f"[{run.name}] ", env)
        if is_finished(sweep_dir / run.name):
            run.succeed()
            break
        run.fail(failure_reason(output, returncode))
        retry = "; trying again (it resumes from its last checkpoint)" if attempt <= retries else ""
        print(f"== {run.name}: attempt {attempt} failed: {run.reason}{retry}", flush=True)
    run.seconds = round(time.time() - started, 1)


def slurm_command(run: PointRun, options: SweepOptions, log_dir: Path) -> List[str]:
    """launch.slurm for one point; its batch and per-node logs go to the sweep folder's slurm/."""
    return [sys.executable, "-m", "launch.slurm", *run.overrides, f"cluster={options.cluster}",
            f"cluster.log_dir={log_dir}", *([f"cluster.nodes={options.nodes}"] if options.nodes else []),
            *(["--dry-run"] if options.dry_run else [])]


def submit(run: PointRun, options: SweepOptions, sweep_dir: Path) -> None:
    command = slurm_command(run, options, sweep_dir / "slurm")
    result = subprocess.run(command, capture_output=True, text=True)
    print(f"== {run.name}: {shlex.join(command)}\n{result.stdout}", end="" if result.stdout.endswith("\n") else "\n",
          flush=True)
    if result.returncode != 0:
        run.fail(failure_reason(result.stdout + result.stderr, result.returncode))
        print(f"== {run.name}: submission failed: {run.reason}", flush=True)
    elif not options.dry_run:
        run.status, run.reason, run.attempts = "submitted", None, run.attempts + 1


def print_plan(state: SweepState, nproc: int) -> None:
    """What a local run would do: each point's command and inspector numbers, or why it cannot run."""
    for run in state.points:
        print(f"== {run.name}")
        if run.config is not None:
            numbers = architecture(run.config)
            print(f"   {numbers['total_params']:,} params, {numbers['active_params']:,} active, "
                  f"{numbers['train_flops_per_token']:,} training FLOPs/token, "
                  f"{numbers['cache_bytes_per_token_32k']:,.1f} cache bytes/token at 32k")
        if run.adjustment:
            a = run.adjustment
            print(f"   matched {a['measure']}: {a['key']} {a['before']} -> {a['after']} ({a['value']:,} vs "
                  f"{a['target']:,}, {a['error']:+.1%})")
        if run.status == "failed":
            print(f"   cannot run: {run.reason}")
        else:
            print(f"   $ {shlex.join(torchrun_command(nproc, 0, 'train', run.overrides))}")


def skip(run: PointRun, sweep_dir: Path) -> bool:
    """Points with nothing to do: finished earlier, or unable to run (their reason is in the report)."""
    if is_finished(sweep_dir / run.name):
        run.succeed()
        print(f"== {run.name}: finished earlier, skipped ({sweep_dir / run.name})", flush=True)
        return True
    if run.status == "failed" and run.attempts == 0:
        print(f"== {run.name}: not run: {run.reason}", flush=True)
        return True
    return False


def run_sweep(state: SweepState, planned: List[PointRun], options: SweepOptions) -> int:
    sweep_dir, started = Path(state.sweep_dir), time.time()
    for run in planned:
        if not skip(run, sweep_dir):
            print(f"== {run.name}: training ({options.nproc} processes, log {sweep_dir / 'logs' / run.name}.log)",
                  flush=True)
            run_local(run, sweep_dir, options.nproc, options.retries)
        state.save()
    report = write_report(sweep_dir)
    print(f"\n{report.read_text()}\nsweep: {(time.time() - started) / 60:.1f} min; report {report}", flush=True)
    return 0 if all(p.status == "finished" for p in planned) else 1


def submit_sweep(state: SweepState, planned: List[PointRun], options: SweepOptions) -> int:
    sweep_dir = Path(state.sweep_dir)
    for run in planned:
        if skip(run, sweep_dir):
            continue
        if run.status == "submitted" and not options.resubmit:
            print(f"== {run.name}: submitted earlier (--resubmit submits it again)", flush=True)
            continue
        submit(run, options, sweep_dir)
        if not options.dry_run:
            state.save()
    if not options.dry_run:
        print(f"when the jobs have finished: {state.command} --report-only", flush=True)
    return 0 if all(p.status != "failed" for p in planned) else 1


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    options, items = parse_args(argv)
    if options.list:
        for name in available_sweeps():
            sweep = load_sweep(name)
            print(f"{name:<12} {len(sweep.points)} points ({', '.join(p.name for p in sweep.points)}): {sweep.description}")
        return 0
    if options.report_only:
        if not (options.out or options.name or options.sweep):
            raise SystemExit("error: --report-only needs the sweep: sweep=<name>, --name or --out")
        sweep_dir = options.sweep_dir(options.name or options.sweep)
        if not (sweep_dir / "sweep.json").is_file():
            raise SystemExit(f"error: {sweep_dir} has no sweep.json; run the sweep first (without --report-only)")
        print(write_report(sweep_dir).read_text())
        return 0
    try:
        state = plan(options, items, shlex.join(["python", "-m", "launch.sweep", *argv]))
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    if options.dry_run and options.launcher == "local":
        print_plan(state, options.nproc)
        return 0
    planned = list(state.points)
    if not options.dry_run:
        Path(state.sweep_dir).mkdir(parents=True, exist_ok=True)
        reconcile(state)
        state.save()
    if options.launcher == "slurm":
        return submit_sweep(state, planned, options)
    return run_sweep(state, planned, options)


if __name__ == "__main__":
    sys.exit(main())
