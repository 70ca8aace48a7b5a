"""Data-parallel training over processes, GPUs and machines: mpi4py starts nothing and
joins the processes mpiexec started (:mod:`.world`), gradients are combined by a
communicator, MPI on the host or NCCL on the GPUs (:mod:`.communicators`), a rank's failure
ends the job (:mod:`.faults`) and :mod:`.trainer` runs ``gpucnn train --distributed``."""
from __future__ import annotations

import os
import sys

from .communicators import COMMUNICATORS, make_communicator, select_device
from .faults import exit_status, fail_rank, install_except_hook, is_collective
from .world import (INSTALL_HINT, CollectiveError, DistributedUnavailable, World,
                    default_threads, init_world)

__all__ = ["COMMUNICATORS", "CollectiveError", "DistributedUnavailable", "INSTALL_HINT",
           "World", "init_world", "make_communicator", "run_train", "mpi_info_lines"]


def run_train(cfg, communicator="auto", world=None):
    """``gpucnn train --distributed``: this process's part of the job. Returns the metrics (on
    every rank); an error all ranks share is raised on rank 0 and ends the others silently with
    the same status (SystemExit); any other error ends the whole job (faults.fail_rank)."""
    from .trainer import train_distributed
    if communicator not in COMMUNICATORS:
        raise ValueError(f"--communicator must be one of {', '.join(COMMUNICATORS)}, got "
                         f"{communicator!r}")
    world = world or init_world()
    install_except_hook(world)
    if not world.is_root:  # only rank 0 prints; errors still reach stderr
        sys.stdout = open(os.devnull, "w")
    threads = default_threads(world)
    os.environ.setdefault("GPUCNN_NUMPY_THREADS", str(threads))
    if not any(os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")):
        from ..cpu.threads import set_blas_threads
        set_blas_threads(threads)  # its share of the machine outside our own threads too
    if (cfg.backend or os.environ.get("GPUCNN_BACKEND", "auto")) in ("auto", "cuda"):
        select_device(world)  # one GPU per rank, whichever communicator reduces
    try:
        return train_distributed(cfg, world, communicator)
    except BaseException as exc:  # noqa: BLE001 - every failure must end every rank
        if isinstance(exc, SystemExit):
            raise
        if is_collective(exc):
            if world.is_root:
                raise
            raise SystemExit(exit_status(exc)) from None
        fail_rank(world, exc)
        raise  # (not reached: the job ends)


def mpi_info_lines(backend=None):
    """``gpucnn info``'s lines on MPI: mpi4py's presence, and under mpiexec this rank and the
    communicator --communicator auto takes with ``backend`` (a Backend, or None)."""
    try:
        import mpi4py
    except ImportError:
        return [f"MPI: mpi4py not installed (gpucnn train --distributed needs it: "
                f"{INSTALL_HINT})"]
    launched = any(k in os.environ for k in ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE",
                                             "PMI_RANK"))
    if not launched:
        return [f"MPI: mpi4py {mpi4py.__version__}; not started by mpiexec (--distributed "
                f"runs as a world of one)"]
    world = init_world()
    library = world.mpi.Get_library_version().split(",")[0].strip()
    if backend is None:
        chosen = "nccl for the cuda backend (when NCCL loads), else mpi"
    elif backend.name != "cuda":
        chosen = f"mpi (the {backend.name} backend computes on the host)"
    else:
        try:
            from .communicators import load_nccl
            load_nccl()
            chosen = "nccl"
        except DistributedUnavailable as exc:
            chosen = f"mpi ({exc})"
    return [f"MPI: mpi4py {mpi4py.__version__}, {library}; {world.describe()}",
            f"communicator: --communicator auto is {chosen}"]
