"""Atomic writes: a reader (or a restarted run) sees the old content or the new, never half of it.

    with atomic_directory("runs/x/model") as tmp:   # fill tmp; it replaces runs/x/model in one rename
        ...
    atomic_write("report.json", text)               # a file: a temporary sibling, then os.replace
    atomic_write("plot.png", lambda tmp: figure.savefig(tmp, format="png"))
"""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Union


@contextlib.contextmanager
def atomic_directory(directory: Union[str, os.PathLike]) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it replaces `directory` (an earlier one is moved
    aside first and removed after the swap), on failure it is removed, so a crash never leaves a
    half-written folder under the final name. A process killed outright leaves its temporary folder behind:
    `remove_stale_temporaries` removes those of processes that are gone."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-{os.getpid()}-", dir=directory.parent))
    try:
        yield tmp
        if directory.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-{os.getpid()}-", dir=directory.parent))
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_temporaries(directory: Union[str, os.PathLike]) -> None:
    """Remove the temporary and moved-aside folders of `atomic_directory(directory)` calls whose process is gone."""
    directory = Path(directory)
    for stale in list(directory.parent.glob(f".{directory.name}.tmp-*")) + list(directory.parent.glob(f".{directory.name}.old-*")):
        pid = stale.name.rsplit("-", 2)[-2]
        try:
            os.kill(int(pid), 0)
        except (OSError, ValueError):  # no such process (or not a pid we wrote): stale
            shutil.rmtree(stale, ignore_errors=True)


def atomic_write(path: Union[str, os.PathLike], content: Union[str, bytes, Callable[[Path], object]]) -> Path:
    """Write `content` (text, bytes, or a function that writes the file it is given) to a temporary
    sibling of `path`, then rename it over `path`. On failure the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        if isinstance(content, str):
            tmp.write_text(content)
        elif isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            content(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def create_once(path: Union[str, os.PathLike], make: Callable[[], str]) -> str:
    """The text of `path`, written first with `make()` if it does not exist yet (a value fixed once per
    folder, e.g. a W&B run id, that every restart and every concurrent reader must agree on)."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            f.write(make())
        try:
            os.link(name, path)  # fails if another process created it first: theirs wins
        except FileExistsError:
            pass
        finally:
            os.unlink(name)
    return path.read_text().strip()
