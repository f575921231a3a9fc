"""Helpers for the fault suite (tests/faults/): a job run from outside, whose processes the test can find,
kill and account for, and what a run that survived a fault must look like.

Every process a `Job` starts, down to a saver's resource tracker, inherits a marker in its environment
(LLMB_FAULT_JOB=<id>), so the test finds them all in /proc whatever their parent, and an *orphan* is a
marked process whose parent is not marked (it was re-parented after its parent died). The job runs in its
own session; `close` kills what is left of it by PID.
"""

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from safetensors.torch import load_file

from common.paths import REPO
from launch.local import torchrun_command
from tests.train_helpers import FAST, PATCHED, losses, metrics

MARKER = "LLMB_FAULT_JOB"
# the run every fault is measured against: 2 ranks, 12 steps, a checkpoint every 3, bit-exact restarts
STEPS = 12
RUN = [*FAST, f"trainer.max_steps={STEPS}", "checkpoint.every=3", "trainer.deterministic=true"]


def training_command(run_dir: Path, data: str, *overrides: str, max_restarts: int = 0) -> List[str]:
    args = [f"out_dir={run_dir.parent}", f"run_name={run_dir.name}", f"data.path={data}", *RUN, *overrides]
    return torchrun_command(2, max_restarts, "train", args, script=PATCHED)


def training_env(fault: str = "") -> Dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", FAULT=fault, PYTHONPATH=str(REPO))


def fault_rng() -> random.Random:
    """The random choices of a fault (which rank, when), reproducible: LLMB_FAULT_SEED=<seed> repeats a run."""
    seed = int(os.environ.get("LLMB_FAULT_SEED", random.randrange(1 << 30)))
    print(f"fault seed {seed} (LLMB_FAULT_SEED={seed} repeats these choices)")
    return random.Random(seed)


def marked_processes(marker: str) -> Dict[int, int]:
    """pid -> parent pid of every live (not zombie) process whose environment holds the marker."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if f"{MARKER}={marker}".encode() not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            status = dict(line.split(":\t", 1) for line in (proc / "status").read_text().splitlines() if ":\t" in line)
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if not status["State"].startswith("Z"):
            found[int(proc.name)] = int(status["PPid"])
    return found


def describe(pids) -> str:
    lines = []
    for pid in pids:
        try:
            command = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            lines.append(f"{pid}: {command[:160]}")
        except OSError:
            lines.append(f"{pid}: (gone)")
    return "; ".join(lines)


def wait_until(condition: Callable[[], object], timeout: float, what: str, poll: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"not within {timeout} s: {what}")


class Job:
    """A command in its own session, its output (stdout and stderr) read through a pipe as it comes."""

    def __init__(self, command: List[str], env: Dict[str, str], log: Path):
        self.marker, self.started = uuid.uuid4().hex, time.time()
        self.log = log
        self.lines: List[str] = []
        self.times: List[float] = []  # when each line came
        self.killed: Optional[float] = None  # when kill_worker last killed one
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env={**env, MARKER: self.marker}, cwd=REPO, start_new_session=True)
        self.reader = threading.Thread(target=self.read, daemon=True)
        self.reader.start()

    def read(self) -> None:
        with open(self.log, "a") as log:
            for line in self.process.stdout:
                self.times.append(time.time())
                self.lines.append(line)
                log.write(line)
                log.flush()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_output(self, pattern: str, timeout: float = 300, after: int = 0) -> re.Match:
        """The first match of `pattern` in the output from line `after` on."""
        def found():
            match = re.search(pattern, "".join(self.lines[after:]), re.M)
            if match is None and self.process.poll() is not None:
                raise AssertionError(f"the job ended ({self.process.returncode}) before printing {pattern!r}:\n"
                                     f"{self.output[-3000:]}")
            return match
        return wait_until(found, timeout, f"{pattern!r} in the output of {self.log}")

    def recovery(self, since: float) -> float:
        """Seconds from `since` (a fault) to the first training step printed after it: the time to recover."""
        return next(t for t, line in zip(self.times, self.lines) if t > since and re.match(step_line(), line)) - since

    def processes(self) -> Dict[int, int]:
        return marked_processes(self.marker)

    def workers(self) -> Dict[int, int]:
        """rank -> pid of the training workers now running: the torchrun agent's children."""
        ranks = {}
        for pid, parent in self.processes().items():
            if parent == self.process.pid:
                environ = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
                rank = next((item[5:] for item in environ if item.startswith(b"RANK=")), None)
                if rank is not None:
                    ranks[int(rank)] = pid
        return ranks

    def kill_worker(self, rng: random.Random, ranks: int = 2) -> int:
        """SIGKILL a random rank's worker, as the OOM killer or a crash would; its rank."""
        workers = wait_until(lambda: (w := self.workers()) and len(w) == ranks and w, 60, "every worker running")
        rank = rng.randrange(ranks)
        os.kill(workers[rank], signal.SIGKILL)
        self.killed = time.time()
        print(f"killed rank {rank} (pid {workers[rank]}) at {time.strftime('%X')}")
        return rank

    def orphans(self) -> Dict[int, int]:
        marked = self.processes()
        return {pid: parent for pid, parent in marked.items() if parent not in marked and pid != self.process.pid}

    def assert_no_orphans(self, within: float = 3.0) -> None:
        """No process of the job outlives its parent for longer than `within` seconds."""
        deadline = time.monotonic() + within
        while (orphans := self.orphans()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not orphans, f"processes outlived their parent by {within} s: {describe(orphans)}"

    def finish(self, timeout: float = 600) -> int:
        """Wait for the job to end; its exit status. Then its output must close (no process left holding
        it) and none of its processes may be left."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the job did not end within {timeout} s:\n{self.output[-3000:]}") from None
        self.reader.join(10)
        assert not self.reader.is_alive(), f"the job ended but its output stayed open: {describe(self.processes())}"
        wait_until(lambda: not self.processes(), 5, f"every process of the job gone: {describe(self.processes())}")
        return self.process.returncode

    def close(self) -> None:
        """Kill whatever is left of the job, by PID."""
        for pid in [self.process.pid, *self.processes()]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(10)


def start_training(jobs: List[Job], run_dir: Path, data: str, *overrides: str, fault: str = "",
                   max_restarts: int = 0, logs: Optional[Path] = None) -> Job:
    """2-rank training of the fault suite's run (RUN); its output goes to `logs` (default: beside the run)."""
    logs = logs or run_dir.parent
    logs.mkdir(parents=True, exist_ok=True)
    job = Job(training_command(run_dir, data, *overrides, max_restarts=max_restarts), training_env(fault),
              logs / f"{run_dir.name}-{len(jobs)}.log")
    jobs.append(job)
    return job


def step_line(step=r"\d+") -> str:
    """The console line of training step `step` (default: any), as a pattern."""
    return rf"^step +{step}/\d+ \| loss"


def assert_survived(run_dir: Path, reference: Path) -> None:
    """What a run that survived its faults holds: every step logged once, only complete checkpoints, and
    the final weights of the uninterrupted run, bit for bit."""
    assert [r["step"] for r in metrics(run_dir) if "loss" in r] == list(range(1, STEPS + 1))
    checkpoints = sorted((run_dir / "checkpoints").glob("step_*"))
    assert checkpoints and all((c / ".metadata").is_file() and (c / "trainer.json").is_file() for c in checkpoints)
    final, expected = load_file(run_dir / "model" / "model.safetensors"), load_file(reference / "model" / "model.safetensors")
    assert final.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(final[name], tensor), name
    assert losses(run_dir) == losses(reference)


def python_job(jobs: List[Job], log: Path, *args: str, env: Optional[Dict[str, str]] = None) -> Job:
    job = Job([sys.executable, *args], env or dict(os.environ, PYTHONPATH=str(REPO)), log)
    jobs.append(job)
    return job
