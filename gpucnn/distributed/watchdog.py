"""A watchdog that ends the job when a rank makes no progress: a peer that died without
ending (a hung machine, a lost network) leaves the others waiting in a collective, and NCCL's
waits spin on the GPU forever; MPI_Abort and ``ncclCommAbort`` (the communicator's abort) are
the only ways out. ``$GPUCNN_WATCHDOG_S`` sets the time allowed between two finished steps
(default :data:`DEFAULT_S`; 0 turns it off); the clock starts at the first finished step, so
start-up work (compiling kernels, loading data) is not counted."""
from __future__ import annotations

import os
import threading
import time

__all__ = ["DEFAULT_S", "Watchdog", "watchdog_seconds"]

DEFAULT_S = 600.0


def watchdog_seconds(environ=None):
    """$GPUCNN_WATCHDOG_S as seconds (0: off), or a ValueError naming it."""
    raw = (os.environ if environ is None else environ).get("GPUCNN_WATCHDOG_S", "").strip()
    if not raw:
        return DEFAULT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (value >= 0 and value < float("inf")):
        raise ValueError(f"GPUCNN_WATCHDOG_S={raw!r}: expected seconds >= 0 (0 turns the "
                         f"watchdog off)")
    return value


class Watchdog:
    """``beat()`` after each step; ``on_timeout()`` runs (once, on the watchdog's thread) when
    ``timeout`` seconds pass without one after the first. Use as a context manager."""

    def __init__(self, timeout, on_timeout, poll=None, clock=time.monotonic):
        self.timeout, self.on_timeout, self.clock = float(timeout), on_timeout, clock
        self.poll = poll if poll is not None else min(1.0, max(0.01, self.timeout / 10))
        self.last = None  # no step finished yet: not armed
        self.fired = False
        self._stop = threading.Event()
        self._thread = None

    def beat(self):
        self.last = self.clock()

    def _watch(self):
        while not self._stop.wait(self.poll):
            if self.last is not None and self.clock() - self.last > self.timeout:
                self.fired = True
                self.on_timeout()
                return

    def __enter__(self):
        if self.timeout > 0:
            self._thread = threading.Thread(target=self._watch, name="gpucnn-watchdog",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return False
