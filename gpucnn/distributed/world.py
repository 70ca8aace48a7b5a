"""The processes of a data-parallel run: who am I (rank, size, rank on this machine), the
host-side collectives the trainer needs, and how a run of several processes agrees on a verdict.

mpi4py starts nothing: ``mpiexec -n N gpucnn train --distributed`` starts the N processes and
each joins ``MPI.COMM_WORLD``; without mpiexec, mpi4py makes a world of one (a "singleton"),
so the same command line runs in one process. The world's collectives are host ones (small
Python objects, NumPy arrays); gradients go through a communicator
(:mod:`gpucnn.distributed.communicators`).

Objects are exchanged with mpi4py's lowercase calls, which pickle: only between the processes
of this job, never from a file or another user (README: "What gpucnn guarantees about your
files").
"""
from __future__ import annotations

import os

import numpy as np

from ..train_data import shard_bounds

__all__ = ["DistributedUnavailable", "CollectiveError", "World", "init_world", "shard_bounds",
           "INSTALL_HINT", "default_threads"]

INSTALL_HINT = ("pip install 'gpucnn[distributed]' (in a checkout: pip install "
                "'.[distributed]'), which brings mpi4py and an MPI with its mpiexec")


class DistributedUnavailable(ValueError):
    """--distributed cannot run here (no mpi4py, no NCCL for --communicator nccl)."""


class CollectiveError(ValueError):
    """An error every rank raises together (a verdict of rank 0, a disagreement found by all):
    each process ends with the same exit status and only rank 0 prints it."""

    collective = True


class World:
    """``comm``: an mpi4py communicator (COMM_WORLD), or a stand-in with its methods (tests)."""

    def __init__(self, comm, mpi=None):
        self.comm, self.mpi = comm, mpi
        self.rank, self.size = int(comm.Get_rank()), int(comm.Get_size())
        self.local_rank, self.local_size = self._node_position()

    def _node_position(self):
        """(rank among the processes of this machine, their count): which GPU a rank takes
        and how many cores it may use."""
        if self.mpi is not None and hasattr(self.comm, "Split_type"):
            node = self.comm.Split_type(self.mpi.COMM_TYPE_SHARED, key=self.rank)
            try:
                return int(node.Get_rank()), int(node.Get_size())
            finally:
                node.Free()
        return self.rank, self.size

    is_root = property(lambda self: self.rank == 0)

    def describe(self):
        return f"rank {self.rank} of {self.size} (local rank {self.local_rank} of " \
               f"{self.local_size})"

    # ---- host collectives ----------------------------------------------------------------
    def bcast(self, obj):
        return self.comm.bcast(obj, root=0)

    def allgather(self, obj):
        return self.comm.allgather(obj)

    def allreduce_sum(self, array):
        """Sum a contiguous NumPy array over the ranks, in place."""
        if self.size > 1:
            self.comm.Allreduce(self.mpi.IN_PLACE, array, op=self.mpi.SUM)
        return array

    def agree_max(self, value):
        """The largest ``value`` (an int) any rank holds: e.g. a stop request made on one rank
        becomes every rank's decision at the same step."""
        return value if self.size == 1 else int(self.comm.allreduce(int(value),
                                                                    op=self.mpi.MAX))

    def barrier(self):
        if self.size > 1:
            self.comm.Barrier()

    def abort(self, code=1):
        """End every rank of the job now (mpiexec kills the others)."""
        self.comm.Abort(code)

    # ---- agreements ------------------------------------------------------------------------
    def root_verdict(self, fn):
        """Run ``fn`` on rank 0 only and share its outcome: its result on every rank, or its
        error raised on every rank (rank 0's own exception; a CollectiveError with its message
        elsewhere), so that checks only rank 0 can make (its output files) stop every rank
        together."""
        outcome = None
        if self.is_root:
            try:
                outcome = ("ok", fn())
            except Exception as exc:  # every kind: the others must hear of it
                outcome = ("error", f"{exc}", type(exc).__name__)
                exc.collective = True
                self.bcast(outcome)
                raise
        outcome = self.bcast(outcome)
        if outcome[0] == "error" and not self.is_root:
            raise CollectiveError(f"rank 0: {outcome[1]}")
        return outcome[1]

    def all_or_none(self, fn):
        """Run ``fn`` on every rank (it must call no collective); if it raised anywhere, every
        rank raises: its own exception where it failed, else a CollectiveError naming the
        first rank that failed and why. Returns ``fn``'s result."""
        error, result = None, None
        try:
            result = fn()
        except Exception as exc:  # every kind: the others must hear of it
            error = exc
        failed = [(r, e) for r, e in enumerate(self.allgather(
            None if error is None else f"{type(error).__name__}: {error}")) if e is not None]
        if error is not None:
            error.collective = True
            raise error
        if failed:
            raise CollectiveError(f"rank {failed[0][0]} could not start: {failed[0][1]}")
        return result

    def check_same(self, what):
        """Stop every rank with one clear error unless all ranks hold the same ``what`` (a
        dict of name -> JSON-like value: the model, the data sizes, the global batch)."""
        seen = self.allgather(what)
        bad = sorted({k for other in seen for k in set(what) | set(other)
                      if other.get(k) != seen[0].get(k)})
        if bad:
            per_rank = "; ".join(f"{k}: " + ", ".join(f"rank {r} {s.get(k)!r}"
                                                      for r, s in enumerate(seen))
                                 for k in bad)
            raise CollectiveError(f"the {self.size} ranks disagree before training ({per_rank}): "
                                  f"every rank must run the same command (model, data, "
                                  f"--limit, --batch-size) on the same files")


def init_world():
    """The world of this process: COMM_WORLD under mpiexec, else a world of one. Raises
    DistributedUnavailable naming the extra to install when mpi4py is missing."""
    # Open MPI polls while a rank waits in a collective; yielding then leaves the core to
    # the ranks still computing (measured here, 2 ranks on 2 shared cores: about twice the
    # images/s). Read by MPI_Init, so set before mpi4py.MPI is imported; the user's wins.
    os.environ.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise DistributedUnavailable(f"--distributed needs mpi4py ({exc}): {INSTALL_HINT}") \
            from None
    return World(MPI.COMM_WORLD, MPI)


def default_threads(world, cores=None, usable=None):
    """This rank's NumPy worker threads: the machine's cores / its ranks on this machine, at
    most the cores this process may run on (mpiexec may bind each rank to some), at least 1;
    so that N ranks on one machine do not oversubscribe it."""
    cores = cores if cores is not None else (os.cpu_count() or 1)
    if usable is None:
        try:
            usable = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            usable = cores
    return max(1, min(usable, cores // max(1, world.local_size)))
