"""The ``numpy`` backend: the fast CPU path and the automatic fallback.

It is the :class:`~.reference.ReferenceBackend` with the tuned CPU paths of the ops that have
one (``gpucnn/ops/*/cpu*.py``, ``ops/activation.relu_backward_cpu``, ``ops/linear``) running
on a :class:`gpucnn.cpu.CpuRuntime` (threads, BLAS control, buffer pools, the
forward->backward column cache); every other op is its plain definition. float32 for
training, float64 accepted too (computed in the input's precision).
"""
from __future__ import annotations

from ..cpu import CpuRuntime, blas_threads, openblas_info
from ..ops import activation, linear
from ..ops.conv import algos as conv_algos
from ..ops.conv import cpu_fused, direct
from ..ops.pool import cpu as pool_cpu
from .reference import ReferenceBackend

__all__ = ["NumpyBackend", "blas_threads", "openblas_info"]

_FUSED = {"wide": (cpu_fused.conv2d_relu_maxpool, cpu_fused.conv2d_relu_maxpool_backward),
          "direct": (direct.conv2d_relu_maxpool, direct.conv2d_relu_maxpool_backward)}


class NumpyBackend(ReferenceBackend):
    name = "numpy"
    conv_policy = "heuristic"  # auto: winograd_f4 / wide / im2col by shape (ops/conv/algos)

    def __init__(self, workspace_bytes=None, threads=None, cache_cols=True):
        self.rt = CpuRuntime(workspace_bytes, threads, cache_cols)

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

    def _conv2d(self, x, w, b, g, relu, algo):
        return conv_algos.get("cpu", algo).forward(self.rt, x, w, b, g, relu)

    def _conv2d_backward(self, dy, x, w, g, need_dx, need_dw, algo):
        return conv_algos.get("cpu", algo).backward(self.rt, dy, x, w, g, need_dx, need_dw)

    # The fused conv + ReLU + max-pool of the "wide" (cpu_fused.py) and "direct" (direct.py)
    # algorithms; the others run the composition.
    def _conv2d_relu_maxpool(self, x, w, b, g, pg, algo):
        fused = _FUSED.get(algo)
        out = fused[0](self.rt, x, w, b, g, pg) if fused else None
        return super()._conv2d_relu_maxpool(x, w, b, g, pg, algo) if out is None else out

    def _conv2d_relu_maxpool_backward(self, dy, switches, y, x, w, g, pg, need_dx, need_dw,
                                      algo):
        fused = _FUSED.get(algo)
        out = (fused[1](self.rt, dy, switches, y, x, w, g, pg, need_dx, need_dw)
               if fused else None)
        if out is None:
            return super()._conv2d_relu_maxpool_backward(dy, switches, y, x, w, g, pg,
                                                         need_dx, need_dw, algo)
        return out

    def _max_pool2d(self, x, g):
        return pool_cpu.max_pool2d(self.rt, x, g)

    def _max_pool2d_backward(self, dy, switches, g):
        return pool_cpu.max_pool2d_backward(self.rt, dy, switches, g)

    def _relu_backward(self, dy, y):
        return activation.relu_backward_cpu(self.rt, dy, y)

    def _linear(self, x, w, b, relu):
        return linear.linear_cpu(self.rt, x, w, b, relu)

    def _linear_backward(self, dy, x, w):
        return linear.linear_backward_cpu(self.rt, dy, x, w)
