"""Writes a reader never sees half done: into a temp file unique to this writer (two processes
never share one), then renamed over the target; a failed write (disk full, a signal) removes its
temp file, so nothing half-written is left behind."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """`write(f)` into a temp file beside `path`, then `os.replace` it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, (OSError, RuntimeError)):  # torch's writer raises RuntimeError
            first = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            if "unexpected pos" in first or "write failed" in first:  # torch's own writer
                first = f"could not write the whole file, disk full or a file-size limit ({first})"
            reason = getattr(err, "strerror", None) or first
            raise OSError(getattr(err, "errno", None) or errno.EIO, reason, str(path)) from err
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda f: f.write(text.encode()))
