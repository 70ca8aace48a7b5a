"""The ``numpy`` backend: the fast CPU path and the automatic fallback.

It is the :class:`~.reference.ReferenceBackend` with the tuned CPU implementation of each op
that has one (``gpucnn/ops/*/cpu*.py``, ``direct.py``, ``winograd.py``,
``ops/activation.relu_backward_cpu``, ``ops/linear``) running on its context, a
:class:`gpucnn.cpu.CpuRuntime` (threads, BLAS control, buffer pools, the forward->backward
column cache); every other op is its plain definition. float32 for training, float64 accepted
too (computed in the input's precision).
"""
from __future__ import annotations

from ..cpu import CpuRuntime, blas_threads, openblas_info
from .base import Backend
from .reference import ReferenceBackend

__all__ = ["NumpyBackend", "blas_threads", "openblas_info"]


class NumpyBackend(ReferenceBackend):
    name = "numpy"
    kind = "cpu"
    conv_policy = "heuristic"  # auto: winograd_f4 / direct / wide / im2col by shape (algos)
    precisions = ("fp32",)   # OpenBLAS and our C++ kernels compute in FP32 only
    use_precision = Backend.use_precision   # its context is its CPU runtime, not _Rounding

    def __init__(self, workspace_bytes=None, threads=None, cache_cols=True):
        self.ctx = self.rt = CpuRuntime(workspace_bytes, threads, cache_cols)

    @property
    def threads(self):
        return self.rt.threads

    @property
    def workspace_bytes(self):
        return self.rt.workspace_bytes

    def describe(self):
        blas = blas_threads()
        t = self.rt.threads
        return (f"numpy (CPU, {t} thread{'s' if t > 1 else ''}"
                + (f"; OpenBLAS held to 1 inside, {blas} outside)" if blas else ")"))
