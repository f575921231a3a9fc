"""Running child processes: a command whose output goes to the console and to a log at once, the
thread count each of several local processes should use, and helpers that die with their parent."""

import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def threads_per_process(nproc: int) -> str:
    """OMP_NUM_THREADS for one of `nproc` processes sharing this machine (the caller's setting wins)."""
    return os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))


def tee(command: List[str], log: Path, prefix: str = "", env: Optional[Dict[str, str]] = None) -> Tuple[int, str]:
    """Run `command`, copying its output (stdout and stderr) to the console, each line after `prefix`,
    and appending it to `log`; returns (exit status, output)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    with open(log, "a") as f, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                               env=env) as process:
        f.write(f"$ {shlex.join(command)}\n")
        for line in process.stdout:
            print(f"{prefix}{line}", end="", flush=True)
            f.write(line)
            lines.append(line)
    return process.returncode, "".join(lines)


def exit_with_parent(parent_pid: int, what: str, interval_s: float = 0.2) -> None:
    """Kill this process (SIGKILL) as soon as `parent_pid` is no longer its parent: the parent died and the
    process was re-parented. For helpers that must never outlive the process they serve (a checkpoint
    saver, a tokenizer worker, a torchrun worker whose agent is gone): an orphan keeps writing into a run
    folder someone else now owns and keeps the job's output pipes open. A daemon thread polls getppid(),
    so it works whichever thread started the process (PR_SET_PDEATHSIG fires when that thread exits)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        try:
            print(f"{what} (pid {os.getpid()}): its parent (pid {parent_pid}) is gone; exiting", file=sys.stderr, flush=True)
        except OSError:  # nobody reads our output any more
            pass
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
