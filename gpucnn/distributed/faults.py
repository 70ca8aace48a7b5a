"""What ends a data-parallel job when one rank fails, so that no rank is left waiting forever
in a collective for a peer that will never come.

* An error every rank raises together (a verdict of rank 0, a disagreement all ranks found, a
  diverged loss they all summed, an agreed stop) ends each process normally with the same
  exit status; only rank 0 prints it.
* Any other exception on one rank (ChainerMN's global except hook pattern): the rank prints
  what failed, naming itself, and calls ``MPI_Abort``, after which mpiexec ends every rank of
  the job (within a second or two here) with a non-zero status. The same hook catches an
  exception that escapes anywhere else in the process.
* A rank killed outright (SIGKILL, out of memory) runs no hook: mpiexec notices the process
  ended without finalising and tears the job down (Open MPI 5 prints "prterun noticed that
  process rank R ... exited on signal 9" and kills the others). On GPUs, NCCL peers of a
  dead rank spin in their collective until the job is torn down; an ``ncclCommAbort``
  watchdog with a timeout is not implemented yet.
"""
from __future__ import annotations

import os
import signal
import sys
import traceback

__all__ = ["is_collective", "exit_status", "install_except_hook", "fail_rank"]


def is_collective(exc):
    """Whether every rank raised ``exc`` at the same point (see the module docstring)."""
    if getattr(exc, "collective", False):
        return True
    # A stop agreed at a step boundary (a second signal's immediate stop is one rank's own).
    return (isinstance(exc, KeyboardInterrupt) and hasattr(exc, "immediate")
            and not exc.immediate)


def exit_status(exc):
    """The exit status ``gpucnn train`` gives ``exc`` (as gpucnn.cli does for one process)."""
    if isinstance(exc, KeyboardInterrupt):
        return 128 + int(getattr(exc, "signum", signal.SIGINT))
    if type(exc).__name__ == "TrainingDiverged":
        return 3
    return 2


def fail_rank(world, exc, communicator=None, stream=None):
    """Print that this rank failed and why, then end the whole job (MPI_Abort)."""
    stream = stream or sys.__stderr__
    try:
        if not isinstance(exc, (ValueError, OSError, KeyboardInterrupt)):
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=stream)
        print(f"gpucnn train: rank {world.rank} of {world.size} failed "
              f"(pid {os.getpid()}): {type(exc).__name__}: {exc}; ending every rank of the "
              f"job (MPI_Abort)", file=stream, flush=True)
    finally:
        if communicator is not None:
            try:
                communicator.abort()
            except Exception:  # noqa: BLE001 - the job ends anyway
                pass
        world.abort(1)


def install_except_hook(world):
    """Make an uncaught exception on this rank end the whole job instead of leaving the other
    ranks waiting; returns the previous hook."""
    previous = sys.excepthook

    def hook(tp, value, tb):
        if value is not None and value.__traceback__ is None:
            value.__traceback__ = tb
        fail_rank(world, value)

    sys.excepthook = hook
    return previous
