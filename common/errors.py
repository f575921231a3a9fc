"""How a command reports bad input: one line, `error: <message>`, on standard error, exit status 1, no traceback.

Bad input (a config value that matches no choice, sizes that do not divide, a missing or damaged file) is
raised as ValueError or FileNotFoundError (data preparation: DataError) with a message that names the key or
file and what to do. Each command's main runs its set-up under `one_line_errors`, which prints that message
alone; Hydra's own switch HYDRA_FULL_ERROR=1 shows the traceback instead. Under torchrun every rank raises
the same error and only rank 0 prints it.
"""

import contextlib
import os
import sys
from typing import Iterator

BAD_INPUT = (ValueError, FileNotFoundError)


@contextlib.contextmanager
def one_line_errors(*kinds: type) -> Iterator[None]:
    """Turn an exception of `kinds` (default BAD_INPUT) into `error: <message>` and exit status 1."""
    caught = kinds or BAD_INPUT
    try:
        yield
    except caught as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
