"""Writes a reader never sees half done: into a temp file unique to this writer (two processes
never share one), then renamed over the target; a failed write (disk full, a signal) removes its
temp file, so nothing half-written is left behind."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, List, Tuple


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """`write(f)` into a temp file beside `path`, then `os.replace` it onto `path`."""
    return write_all_atomic([(path, write)])[0]


def write_all_atomic(items: List[Tuple[str | Path, Callable[[BinaryIO], None]]],
                     previous: str | None = None) -> List[Path]:
    """Every `(path, write)` into its temp file first, then all renamed in a row: files that
    belong together (the checkpoints of a stack's seeds) are replaced together, not one slow
    write apart. With `previous`, each file replaced is first renamed to that name beside it:
    a kill between two renames leaves every file's earlier version on disk."""
    paths, temps = [Path(p) for p, _ in items], []
    try:
        for path, (_, write) in zip(paths, items):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            temps.append(tmp)
            with os.fdopen(fd, "wb") as f:
                write(f)
        for tmp, path in zip(temps, paths):
            if previous is not None and path.exists():
                os.replace(path, path.with_name(previous))
            os.replace(tmp, path)
    except BaseException as err:
        for tmp in temps:
            Path(tmp).unlink(missing_ok=True)
        path = paths[len(temps) - 1] if temps else paths[0]
        if isinstance(err, (OSError, RuntimeError)):  # torch's writer raises RuntimeError
            first = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            if "unexpected pos" in first or "write failed" in first:  # torch's own writer
                first = f"could not write the whole file, disk full or a file-size limit ({first})"
            reason = getattr(err, "strerror", None) or first
            raise OSError(getattr(err, "errno", None) or errno.EIO, reason, str(path)) from err
        raise
    return paths


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda f: f.write(text.encode()))
