"""How the ranks of a data-parallel run combine their gradients (``--communicator``).

* ``mpi``: the gradient buffer all-reduced on the host by MPI (in place on a CPU backend's
  NumPy buffer; copied to the host and back on a device backend). What CPU runs use.
* ``nccl``: one process per GPU (the device is the rank's local rank on its machine), the
  buffer all-reduced on the GPU by NCCL (``cupy.cuda.nccl``) on the backend's stream, never
  copied to the host. NCCL's unique id is made on rank 0 and broadcast over MPI.

Either way the gradients are reduced as **one** buffer per step, not one call per parameter:
the model's flat gradient buffer (:mod:`gpucnn.nn.flat`) when every parameter still has its
gradient in its view, else a buffer the gradients are packed into and unpacked from
(:class:`GradientBuffer`). Each rank first scales its buffer by its share of the global batch
(its images / the global batch's), so the sum over ranks is the gradient of the mean loss
over the global batch, as one process computes it, up to the order of the summation.
"""
from __future__ import annotations

import os
import time

import numpy as np

from .world import DistributedUnavailable

__all__ = ["COMMUNICATORS", "GradientBuffer", "MpiCommunicator", "NcclCommunicator",
           "communicator_name", "load_nccl", "make_communicator", "select_device", "NCCL_HINT"]

COMMUNICATORS = ("auto", "mpi", "nccl")
NCCL_HINT = ("install the NCCL wheel CuPy loads: pip install 'gpucnn[cuda12]' (brings "
             "nvidia-nccl-cu12) or 'gpucnn[cuda13]'")


class GradientBuffer:
    """The gradients of ``params`` (on ``backend``) as one contiguous buffer."""

    def __init__(self, backend, params):
        self.backend, self.params = backend, list(params)
        self.flat = self.params[0].flat if self.params else None
        self.slices, n = [], 0
        for p in self.params:
            self.slices.append((n, n + p.data.size))
            n += p.data.size
        self.size = n
        self._packed = None
        self.packs = 0  # steps that needed the copy (0 while the flat buffer is intact)

    def gather(self):
        """(buffer, packed): the flat gradient buffer itself, or a copy of the gradients."""
        if self.flat is not None and self.flat.intact(self.params):
            return self.flat.grad, False
        dtype = self.params[0].grad.dtype
        if self._packed is None or self._packed.dtype != dtype:
            self._packed = self.backend.zeros((self.size,), dtype)
        for p, (a, b) in zip(self.params, self.slices):
            self._packed[a:b] = p.grad.reshape(-1)
        self.packs += 1
        return self._packed, True

    def scatter(self, buf, packed):
        """Give the reduced ``buf`` back to the gradients (nothing to do unless packed)."""
        if packed:
            for p, (a, b) in zip(self.params, self.slices):
                p.grad[...] = buf[a:b].reshape(p.grad.shape)


class _Timed:
    """Counts the reductions and the host seconds spent in them (on a GPU the time to queue
    the work unless the caller synchronises)."""
    calls = 0
    seconds = 0.0

    def _timed(self, fn, *args):
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.calls += 1
            self.seconds += time.perf_counter() - t0


class MpiCommunicator(_Timed):
    name = "mpi"

    def __init__(self, world, backend):
        self.world, self.backend = world, backend

    def allreduce_mean(self, buf, weight):
        """buf = sum over ranks of weight_r * buf_r, in place."""
        self._timed(self._allreduce, buf, weight)

    def _allreduce(self, buf, weight):
        host = buf if isinstance(buf, np.ndarray) else self.backend.to_numpy(buf)
        if weight != 1.0:
            host *= host.dtype.type(weight)
        self.world.allreduce_sum(host)
        if host is not buf:
            buf[...] = self.backend.asarray(host, dtype=host.dtype)

    def broadcast(self, buf):
        """Rank 0's ``buf`` on every rank, in place."""
        if self.world.size == 1:
            return
        host = buf if isinstance(buf, np.ndarray) else self.backend.to_numpy(buf)
        self.world.comm.Bcast(host, root=0)
        if host is not buf:
            buf[...] = self.backend.asarray(host, dtype=host.dtype)

    def abort(self):
        pass


def load_nccl():
    """cupy.cuda.nccl, or DistributedUnavailable saying what to install."""
    try:
        from cupy.cuda import nccl
    except Exception as exc:  # noqa: BLE001 - CuPy missing or broken: the same advice
        raise DistributedUnavailable(f"--communicator nccl needs CuPy with NCCL ({exc}); "
                                     f"{NCCL_HINT}") from None
    if not getattr(nccl, "available", True):
        raise DistributedUnavailable(f"--communicator nccl: CuPy could not load the NCCL "
                                     f"library; {NCCL_HINT}")
    return nccl


class NcclCommunicator(_Timed):
    name = "nccl"

    def __init__(self, world, backend, nccl=None):
        if backend.name != "cuda":
            raise DistributedUnavailable(
                f"--communicator nccl reduces on GPUs and needs --backend cuda; the "
                f"{backend.name} backend's arrays are host arrays (use --communicator mpi)")
        self.world, self.backend = world, backend
        self.nccl = nccl if nccl is not None else load_nccl()
        uid = world.bcast(self.nccl.get_unique_id() if world.is_root else None)
        with backend.on_device():
            self.comm = self.nccl.NcclCommunicator(world.size, uid, world.rank)

    def _dtype(self, buf):
        kinds = {np.dtype(np.float32): self.nccl.NCCL_FLOAT32,
                 np.dtype(np.float64): self.nccl.NCCL_FLOAT64}
        if np.dtype(buf.dtype) not in kinds:
            raise ValueError(f"nccl: cannot reduce a {buf.dtype} buffer (float32 or float64)")
        return kinds[np.dtype(buf.dtype)]

    def _stream(self):
        return self.backend.xp.cuda.get_current_stream().ptr

    def allreduce_mean(self, buf, weight):
        self._timed(self._allreduce, buf, weight)

    def _allreduce(self, buf, weight):
        with self.backend.on_device():
            if weight != 1.0:
                buf *= weight
            self.comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, self._dtype(buf),
                                self.nccl.NCCL_SUM, self._stream())

    def broadcast(self, buf):
        with self.backend.on_device():
            self.comm.bcast(buf.data.ptr, buf.size, self._dtype(buf), 0, self._stream())

    def abort(self):
        """Wake the NCCL peers of a failed rank (otherwise they spin in the collective)."""
        self.comm.abort()


def select_device(world, environ=None):
    """Make GPU = local rank the cuda backend's device ($GPUCNN_CUDA_DEVICE, read when the
    backend is made) unless the user chose one; returns the device index in force."""
    environ = os.environ if environ is None else environ
    if not environ.get("GPUCNN_CUDA_DEVICE"):
        environ["GPUCNN_CUDA_DEVICE"] = str(world.local_rank)
    return int(environ["GPUCNN_CUDA_DEVICE"])


def communicator_name(name, backend, nccl=None):
    """The communicator ``name`` means for ``backend`` (auto: nccl for the cuda backend when
    NCCL loads, else mpi), or DistributedUnavailable; collective-free, so each rank decides
    before the ranks compare their choices."""
    if name not in COMMUNICATORS:
        raise ValueError(f"--communicator must be one of {', '.join(COMMUNICATORS)}, got "
                         f"{name!r}")
    if name == "mpi" or (name == "auto" and backend.name != "cuda"):
        return "mpi"
    if name == "nccl" and backend.name != "cuda":
        raise DistributedUnavailable(
            f"--communicator nccl reduces on GPUs and needs --backend cuda; the "
            f"{backend.name} backend's arrays are host arrays (use --communicator mpi)")
    try:
        if nccl is None:
            load_nccl()
    except DistributedUnavailable:
        if name == "nccl":
            raise
        return "mpi"
    return "nccl"


def make_communicator(name, world, backend, nccl=None):
    """The communicator ``name`` (see communicator_name) of ``world`` for ``backend``."""
    name = communicator_name(name, backend, nccl)
    if name == "nccl":
        return NcclCommunicator(world, backend, nccl)
    return MpiCommunicator(world, backend)
