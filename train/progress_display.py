"""What rank 0 shows of a run's progress: steps, elapsed time, ETA, tokens/s and the loss.

On a terminal (`logging.progress=auto`, or `bar`) a tqdm bar at the bottom moves every step (host-side
counts only, no device sync) with the last reported loss and tokens/s; the report lines and trainer.say's
messages print above it (tqdm.write). Elsewhere (a pipe, a log file, a SLURM job; or `lines`) each report
line ends with the elapsed time and the ETA instead. ETA = steps left / the steps per second of this attempt so far (validation included).
"""

import sys
import time
from typing import Dict, Optional

from tqdm import tqdm

MODES = ("auto", "bar", "lines")


def clock(seconds: float) -> str:
    """h:mm:ss, or m:ss under an hour."""
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class ProgressDisplay:
    def __init__(self, stage: str, max_steps: int, mode: str, enabled: bool, stream=None):
        if mode not in MODES:
            raise ValueError(f"logging.progress={mode!r} is unknown; use one of {', '.join(MODES)}")
        self.stage, self.max_steps, self.enabled = stage, max_steps, enabled
        self.stream = stream or sys.stdout
        self.use_bar = enabled and (mode == "bar" or (mode == "auto" and self.stream.isatty()))
        self.bar: Optional[tqdm] = None
        self.started, self.first_step = time.perf_counter(), 0

    def start(self, step: int) -> None:
        """The run starts (or resumes) at `step`."""
        self.started, self.first_step = time.perf_counter(), step
        if self.use_bar:
            self.bar = tqdm(total=self.max_steps, initial=step, desc=self.stage, unit="step", file=self.stream,
                            dynamic_ncols=True, bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                            "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")

    def advance(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def timing(self, step: int) -> str:
        """'0:35 elapsed, ETA 5:10' for this attempt at `step`."""
        elapsed = time.perf_counter() - self.started
        done = step - self.first_step
        eta = clock((self.max_steps - step) * elapsed / done) if done > 0 else "?"
        return f"{clock(elapsed)} elapsed, ETA {eta}"

    def report(self, line: str, step: int, record: Dict[str, float]) -> None:
        """A report line: above the bar (which then shows its loss and tokens/s), or with the timing appended."""
        if not self.enabled:
            return
        if self.bar is None:
            print(f"{line} | {self.timing(step)}", file=self.stream, flush=True)
            return
        self.bar.set_postfix_str(f"loss {record['loss']:.4f}, {record['tokens_per_s']:,.0f} tok/s", refresh=False)
        self.bar.write(line, file=self.stream)
        self.advance(step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
