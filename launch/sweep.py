"""Architecture lab: one pre-training run per configuration, then a report of them side by side.

    python -m launch.sweep sweep=attention                          # every point of configs/sweep/attention.yaml
    python -m launch.sweep sweep=attention --points mha,gqa,mla trainer.max_steps=100
    python -m launch.sweep model.mixers.full.attention.num_kv_heads=1,2,4 --name kv_heads   # Hydra's sweep syntax
    python -m launch.sweep sweep=ffn --match params                 # sizes adjusted to the first point's
    python -m launch.sweep sweep=attention --launcher slurm --cluster generic_gpu   # submit, then later:
    python -m launch.sweep sweep=attention --report-only
    python -m launch.sweep --list                                   # the named sweeps

Every point is its own `python -m train` (Hydra's multirun inside one torchrun cannot re-create the
process group): locally one elastic torchrun after the other (launch/local.py, `--nproc` ranks), or one
SLURM job each (`python -m launch.slurm <overrides> cluster=<name>`). Every point trains on the same
data, seed and token budget, into <sweep dir>/<point>/ (default sweep dir: outputs/sweeps/<name>), and
logs to W&B in the group <name> when the base overrides turn W&B on (logging.wandb.mode=online|offline).

`--match params|active|nonembedding|flops` adjusts one size knob per point (the sweep's `knob:` or
`--knob`) so that its size equals the first point's within `--tolerance` (launch/match.py); the
adjustment is in the report. A point that fails is tried again `--retries` times (the trainer resumes
from its checkpoint) and then marked failed in the report with the reason from its log; the sweep goes
on. A point whose run folder holds the final model is skipped on re-run. sweep.json in the sweep dir
records the plan and each point's status; the report is launch/report.py's.
"""

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from omegaconf import OmegaConf

from launch.local import torchrun_command
from launch.match import match_knob, measure
from launch.report import architecture, finished, write_atomic, write_report
from launch.sweep_config import (MATCH_KINDS, Composer, Point, axis_label, expand, load_sweep, split_command_line,
                                 available_sweeps)
from train.model.inspect import summarize

ERROR_LINE = re.compile(r"^(?:\[rank\d+\]:\s*)?((?:[\w.]+\.)?\w*(?:Error|Exception|Interrupt)\b.*|error: .*)$")
SIGNAL_LINE = re.compile(r"Signal \d+ \(\w+\) received by PID \d+")  # torchrun's summary of a killed rank


def parse_args(argv: Optional[List[str]]):
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
    parser.add_argument("-m", "--multirun", action="store_true", help="accepted out of Hydra habit: comma lists sweep")
    args, rest = parser.parse_known_args(argv)
    unknown = [item for item in rest if item.startswith("-")]
    if unknown:
        parser.error(f"unknown options {unknown}")
    args.sweep = None
    items = []
    for item in rest:
        if item.startswith("sweep="):
            args.sweep = item.removeprefix("sweep=")
        else:
            items.append(item)
    if args.launcher == "slurm" and not args.cluster and not args.report_only:
        parser.error("--launcher slurm needs --cluster NAME")
    return args, items


def sweep_dir_of(args, name: str) -> Path:
    return Path(args.out or Path("outputs") / "sweeps" / name).resolve()


def plan(args, items: List[str], command: str) -> Dict[str, object]:
    """The points, their full overrides, composed configs and (with --match) size adjustments: sweep.json's content."""
    sweep = load_sweep(args.sweep) if args.sweep else None
    cli_base, axes = split_command_line(items)
    points = expand(sweep, args.points, axes)
    name = args.name or args.sweep or "-".join(axis_label(key, "") for key, _ in axes) or "sweep"
    sweep_dir = sweep_dir_of(args, name)
    match = args.match or (sweep.match if sweep else "none")
    base = (sweep.base if sweep else []) + cli_base

    def driver(point: str) -> List[str]:  # the sweep's own keys, last
        return [f"out_dir={sweep_dir}", f"run_name={point}", f"logging.wandb.group={name}"]

    entries, configs = [], {}
    with Composer() as compose:
        for point in points:
            entry = {"name": point.name, "overrides": base + point.overrides + driver(point.name), "status": "pending",
                     "reason": None, "attempts": 0, "seconds": 0.0, "adjustment": None, "config": None}
            try:
                configs[point.name] = compose(entry["overrides"])
                entry["config"] = OmegaConf.to_container(OmegaConf.structured(configs[point.name]))
            except ValueError as e:
                entry.update(status="failed", reason=f"invalid overrides: {e}")
            entries.append(entry)
        if match != "none":
            match_sizes(entries, points, configs, match, args, sweep.multiple_of if sweep else 8, compose, driver)
    first = next((c for c in configs.values()), None)
    budget = "unknown (no point composes)" if first is None else (
        f"{first.trainer.max_steps} steps x {first.trainer.global_batch_size} sequences x {first.data.seq_len} tokens = "
        f"{first.trainer.max_steps * first.trainer.global_batch_size * first.data.seq_len:,} tokens per point; "
        f"data {first.data.path}; seed {first.trainer.seed}")
    return {"name": name, "description": sweep.description if sweep else "", "command": command, "budget": budget,
            "match": match, "reference": points[0].name, "sweep_dir": str(sweep_dir), "points": entries}


def match_sizes(entries, points: List[Point], configs, match: str, args, multiple_of: int, compose, driver) -> None:
    """Adjust each point's knob so that its `match` measure equals the first point's (the reference)."""
    reference = configs.get(points[0].name)
    if reference is None:
        raise SystemExit(f"error: --match {match} compares with the first point, {points[0].name}, which does not "
                         f"compose: {entries[0]['reason']}")
    target = measure(summarize(reference.model, reference.data.seq_len), match)
    for entry, point in zip(entries[1:], points[1:]):
        config, knob = configs.get(point.name), args.knob or point.knob
        if config is None:  # did not compose: already failed
            continue
        if not knob:
            entry.update(status="failed", reason=f"--match {match} needs a size knob: set knob: in the sweep's YAML "
                                                 f"(for every point or this one) or pass --knob KEY")
            continue
        try:
            adjustment = match_knob(config.model, knob, match, target, config.data.seq_len, multiple_of)
        except ValueError as e:
            entry.update(status="failed", reason=str(e))
            continue
        entry["adjustment"] = adjustment.to_dict()
        if abs(adjustment.error) > args.tolerance:
            entry.update(status="failed", reason=f"--match {match}: {knob}={adjustment.after} comes closest, "
                                                 f"{adjustment.value:,} vs {target:,} ({adjustment.error:+.1%}, over "
                                                 f"--tolerance {args.tolerance:g}); pick another knob")
            continue
        entry["overrides"] = entry["overrides"][:-len(driver(""))] + [f"{knob}={adjustment.after}"] + driver(point.name)
        configs[point.name] = compose(entry["overrides"])
        entry["config"] = OmegaConf.to_container(OmegaConf.structured(configs[point.name]))


def reconcile(state: Dict[str, object], sweep_dir: Path) -> None:
    """Merge with an earlier sweep.json: its other points stay in the report. The budget must be the same,
    and a finished point must have been run with the same overrides, or the report would compare apples
    and oranges."""
    path = sweep_dir / "sweep.json"
    if not path.is_file():
        return
    earlier_state = json.loads(path.read_text())
    if earlier_state["budget"] != state["budget"]:
        raise SystemExit(f"error: {sweep_dir} holds a sweep with another budget ({earlier_state['budget']}; now: "
                         f"{state['budget']}); its points would not compare: use another --out")
    earlier = {p["name"]: p for p in earlier_state["points"]}
    planned = {p["name"] for p in state["points"]}
    for entry in state["points"]:
        before = earlier.get(entry["name"])
        if before is None:
            continue
        if finished(sweep_dir / entry["name"]) and before["overrides"] != entry["overrides"]:
            changed = sorted(set(before["overrides"]) ^ set(entry["overrides"]))
            raise SystemExit(f"error: point {entry['name']} in {sweep_dir} finished with other overrides (differing: "
                             f"{changed}); re-run with the same arguments, or use another --out")
        if before["status"] == "submitted" and entry["status"] == "pending":
            entry["status"] = "submitted"
    state["points"] = [p for p in earlier.values() if p["name"] not in planned] + state["points"]


def save(state: Dict[str, object], sweep_dir: Path) -> None:
    write_atomic(sweep_dir / "sweep.json", lambda tmp: tmp.write_text(json.dumps(state, indent=1) + "\n"))


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


def stream(command: List[str], log: Path, label: str, env: Dict[str, str]):
    """Run `command`, copying its output to the console (prefixed) and to `log`; (exit status, output)."""
    lines = []
    with open(log, "a") as f, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                               env=env) as process:
        f.write(f"$ {shlex.join(command)}\n")
        for line in process.stdout:
            print(f"[{label}] {line}", end="", flush=True)
            f.write(line)
            lines.append(line)
    return process.returncode, "".join(lines)


def run_local(entry: Dict[str, object], sweep_dir: Path, nproc: int, retries: int) -> None:
    log = sweep_dir / "logs" / f"{entry['name']}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    threads = os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))  # as launch.local
    env = dict(os.environ, OMP_NUM_THREADS=threads)
    started = time.time()
    for attempt in range(1, retries + 2):
        entry["attempts"] = attempt
        returncode, output = stream(torchrun_command(nproc, 0, "train", entry["overrides"]), log, entry["name"], env)
        if finished(sweep_dir / entry["name"]):
            entry.update(status="finished", reason=None)
            break
        entry.update(status="failed", reason=failure_reason(output, returncode))
        retry = "; trying again (it resumes from its last checkpoint)" if attempt <= retries else ""
        print(f"== {entry['name']}: attempt {attempt} failed: {entry['reason']}{retry}", flush=True)
    entry["seconds"] = round(time.time() - started, 1)


def slurm_command(entry: Dict[str, object], cluster: str, nodes: Optional[int], dry_run: bool, log_dir: Path) -> List[str]:
    """launch.slurm for one point; its batch and per-node logs go to the sweep folder's slurm/."""
    return [sys.executable, "-m", "launch.slurm", *entry["overrides"], f"cluster={cluster}", f"cluster.log_dir={log_dir}",
            *([f"cluster.nodes={nodes}"] if nodes else []), *(["--dry-run"] if dry_run else [])]


def submit(entry: Dict[str, object], args, sweep_dir: Path) -> None:
    command = slurm_command(entry, args.cluster, args.nodes, args.dry_run, sweep_dir / "slurm")
    result = subprocess.run(command, capture_output=True, text=True)
    print(f"== {entry['name']}: {shlex.join(command)}\n{result.stdout}", end="" if result.stdout.endswith("\n") else "\n",
          flush=True)
    if result.returncode != 0:
        entry.update(status="failed", reason=failure_reason(result.stdout + result.stderr, result.returncode))
        print(f"== {entry['name']}: submission failed: {entry['reason']}", flush=True)
    elif not args.dry_run:
        entry.update(status="submitted", reason=None, attempts=entry["attempts"] + 1)


def print_plan(state: Dict[str, object], nproc: int) -> None:
    """What a local run would do: each point's command and inspector numbers, or why it cannot run."""
    for entry in state["points"]:
        print(f"== {entry['name']}")
        if entry["config"] is not None:
            numbers = architecture(entry["config"])
            print(f"   {numbers['total_params']:,} params, {numbers['active_params']:,} active, "
                  f"{numbers['train_flops_per_token']:,} training FLOPs/token, "
                  f"{numbers['cache_bytes_per_token_32k']:,.1f} cache bytes/token at 32k")
        if entry["adjustment"]:
            adjustment = entry["adjustment"]
            print(f"   matched {adjustment['measure']}: {adjustment['key']} {adjustment['before']} -> "
                  f"{adjustment['after']} ({adjustment['value']:,} vs {adjustment['target']:,}, {adjustment['error']:+.1%})")
        if entry["status"] == "failed":
            print(f"   cannot run: {entry['reason']}")
        else:
            print(f"   $ {shlex.join(torchrun_command(nproc, 0, 'train', entry['overrides']))}")


def skip(entry: Dict[str, object], sweep_dir: Path) -> bool:
    """Points with nothing to do: finished earlier, or unable to run (their reason is in the report)."""
    if finished(sweep_dir / entry["name"]):
        entry.update(status="finished", reason=None)
        print(f"== {entry['name']}: finished earlier, skipped ({sweep_dir / entry['name']})", flush=True)
        return True
    if entry["status"] == "failed" and entry["attempts"] == 0:
        print(f"== {entry['name']}: not run: {entry['reason']}", flush=True)
        return True
    return False


def run_sweep(state: Dict[str, object], planned: List[Dict[str, object]], sweep_dir: Path, args) -> int:
    started = time.time()
    for entry in planned:
        if not skip(entry, sweep_dir):
            print(f"== {entry['name']}: training ({args.nproc} processes, log {sweep_dir / 'logs' / entry['name']}.log)",
                  flush=True)
            run_local(entry, sweep_dir, args.nproc, args.retries)
        save(state, sweep_dir)
    report = write_report(sweep_dir)
    print(f"\n{report.read_text()}\nsweep: {(time.time() - started) / 60:.1f} min; report {report}", flush=True)
    return 0 if all(p["status"] == "finished" for p in planned) else 1


def submit_sweep(state: Dict[str, object], planned: List[Dict[str, object]], sweep_dir: Path, args) -> int:
    for entry in planned:
        if skip(entry, sweep_dir):
            continue
        if entry["status"] == "submitted" and not args.resubmit:
            print(f"== {entry['name']}: submitted earlier (--resubmit submits it again)", flush=True)
            continue
        submit(entry, args, sweep_dir)
        if not args.dry_run:
            save(state, sweep_dir)
    if not args.dry_run:
        print(f"when the jobs have finished: {state['command']} --report-only", flush=True)
    return 0 if all(p["status"] != "failed" for p in planned) else 1


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, items = parse_args(argv)
    if args.list:
        for name in available_sweeps():
            sweep = load_sweep(name)
            names = ", ".join(p.name for p in sweep.points)
            print(f"{name:<12} {len(sweep.points)} points ({names}): {sweep.description}")
        return 0
    if args.report_only:
        if not (args.out or args.name or args.sweep):
            raise SystemExit("error: --report-only needs the sweep: sweep=<name>, --name or --out")
        sweep_dir = sweep_dir_of(args, args.name or args.sweep)
        if not (sweep_dir / "sweep.json").is_file():
            raise SystemExit(f"error: {sweep_dir} has no sweep.json; run the sweep first (without --report-only)")
        print(write_report(sweep_dir).read_text())
        return 0
    try:
        state = plan(args, items, shlex.join(["python", "-m", "launch.sweep", *argv]))
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    if args.dry_run and args.launcher == "local":
        print_plan(state, args.nproc)
        return 0
    sweep_dir, planned = Path(state["sweep_dir"]), list(state["points"])
    if not args.dry_run:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        reconcile(state, sweep_dir)
        save(state, sweep_dir)
    if args.launcher == "slurm":
        return submit_sweep(state, planned, sweep_dir, args)
    return run_sweep(state, planned, sweep_dir, args)


if __name__ == "__main__":
    sys.exit(main())
