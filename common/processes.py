"""Running child processes: a command whose output goes to the console and to a log at once, and the
thread count each of several local processes should use."""

import os
import shlex
import socket
import subprocess
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
