"""Ctrl-C and SIGTERM stop a run cleanly: the first one asks the loop to stop after the current
step (the loop then checkpoints, flushes and records the interruption); a second one stops at
once, the default way."""

from __future__ import annotations

import signal
import sys
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_EARLY: list = []  # a stop signal that arrived before the loop installed its handlers


def catch_early_signals() -> None:
    """From process start (the command-line entry point calls this first): remember a SIGINT or
    SIGTERM that arrives while torch loads, so the run stops right after it starts, with a
    summary and a checkpoint, instead of dying silently."""
    if threading.current_thread() is not threading.main_thread():
        return

    def remember(signum: int, frame) -> None:
        if _EARLY:  # asked twice: stop now, the default way
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        _EARLY.append(signum)
        print(f"\n{signal.Signals(signum).name} received while starting: the run will stop "
              "after its first checkpoint.", file=sys.stderr, flush=True)

    for s in STOP_SIGNALS:
        signal.signal(s, remember)


class StopSignals:
    """Context manager; `requested` turns true on the first SIGINT or SIGTERM."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str | None:
        return None if self.signum is None else signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process stopped by a signal: 128 + its number."""
        return 0 if self.signum is None else 128 + self.signum

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:  # asked twice: stop now
            self._restore()
            signal.raise_signal(signum)
            return
        self.signum = signum
        print(f"\n{signal.Signals(signum).name} received: stopping after this step with a "
              "checkpoint (send it again to stop at once, without one).", file=sys.stderr,
              flush=True)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __enter__(self) -> StopSignals:
        # Python only lets the main thread install handlers; elsewhere the caller's stay in place.
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        if _EARLY:
            self.signum = _EARLY.pop()
        return self

    def __exit__(self, *exc) -> None:
        self._restore()
