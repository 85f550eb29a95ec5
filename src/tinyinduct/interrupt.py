"""Ctrl-C and SIGTERM stop a run cleanly: the first one asks the loop to stop after the current
step (the loop then checkpoints, flushes and records the interruption); a second one stops at
once, the default way."""

from __future__ import annotations

import signal
import sys
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


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
        return self

    def __exit__(self, *exc) -> None:
        self._restore()
