"""A run directory has one writer and is never overwritten: a fresh run refuses a directory that
already holds a run's files, and a lock (an `flock` on `RUN_DIR/.lock`, which the kernel drops
when its process dies, so a crashed run never leaves it stuck) keeps a second process out."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import IO

from .config import ConfigError

LOCK_FILE = ".lock"
# What a run writes: any of these makes a directory a run's (Hydra's own .hydra/ and train.log,
# written before the run starts, do not).
RUN_FILES = ("metrics.jsonl", "summary.json", "checkpoints", "record", "report.html")


class RunDirError(ConfigError):
    """A run directory that cannot be used: named, with what to do instead."""

    def __init__(self, run_dir: Path, problem: str):
        super().__init__("run_dir", str(run_dir), problem)


def run_files(run_dir: Path) -> list:
    """The run files already in `run_dir` (a stacked run's seed folders included)."""
    if not run_dir.is_dir():
        return []
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    found += sorted(p.name for p in run_dir.glob("seed*") if (p / "metrics.jsonl").exists())
    return found


def claim(run_dir: Path, resuming: bool) -> IO:
    """Create `run_dir` if needed, take its lock and check it may be written; return the open
    lock file (keep it open for the whole run). `RunDirError` otherwise, naming the problem."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = open(run_dir / LOCK_FILE, "a+")
    except OSError as err:
        raise RunDirError(run_dir, f"cannot be written ({os_reason(err)}): choose a directory "
                          "you can write to (hydra.run.dir=...)") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise RunDirError(run_dir, f"another run (pid {holder}) is writing into it: wait for it "
                          "to end, or choose a new directory") from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    existing = run_files(run_dir)
    if existing and not resuming:
        lock.close()
        raise RunDirError(run_dir, f"already holds a run ({', '.join(existing)}): continue it "
                          f"with resume={run_dir}, or choose a new directory")
    return lock


def os_reason(err: OSError) -> str:
    """An OSError in words a user acts on."""
    if err.errno == errno.ENAMETOOLONG:
        return "a name in the path is longer than the file system allows"
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return "read-only or not permitted"
    return err.strerror or type(err).__name__


class RunFault(Exception):
    """A run stopped by its machine (disk full, out of memory, a file it could not write), in
    one line; what it had written up to its last checkpoint is kept."""

    def __init__(self, err: BaseException, run_dir: Path):
        name = getattr(err, "filename", None)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        what = getattr(err, "strerror", None) or first
        if out_of_memory(err):
            what = "out of memory (try a smaller model.d_model, data.batch_size or train.n_seeds)"
        where = f" writing {name}" if name else ""
        super().__init__(f"{what}{where}; files of {run_dir} up to its last checkpoint are kept "
                         f"(resume={run_dir} continues it)")


def out_of_memory(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, MemoryError) or "out of memory" in text \
        or "can't allocate memory" in text
