"""GEMM steps computed on the host side of the array module: cuBLAS through ``xp.matmul``
(the ``cuda`` backend with GPUCNN_CUBLAS=1, for comparison benchmarks), with the launch
interface of gpucnn/ops/gemm.py's SgemmLaunch."""
from __future__ import annotations

import numpy as np

from .launch import plan_1d
from .storage import is_bf16

__all__ = ["HostGemm", "cublas_gemm"]


class HostGemm:
    """A GEMM step computed by ``fn(a, b, c, bias)`` on the host side of the array module
    (cuBLAS through ``xp.matmul``), with the launch interface of :class:`SgemmLaunch`."""
    __slots__ = ("fire",)

    def __init__(self, fn):
        self.fire = lambda args: fn(*args)

    @staticmethod
    def args(a, b, c, bias=None):
        return a, b, c, bias

    def __call__(self, a, b, c, bias=None):
        self.fire((a, b, c, bias))


def cublas_gemm(ctx, M, N, trans_a, trans_b, bias_axis, relu, beta, dtypes):
    """The cuBLAS comparison path of gpucnn.ops.gemm.plan_gemm: ``xp.matmul`` in float32,
    bf16 operands (``dtypes``) widened exactly and a bf16 out rounded once
    (``cast_to_bf16``, kernels/cast.cu), as our kernels do."""
    xp, beta32 = ctx.xp, np.float32(beta)
    bf16 = [is_bf16(d) for d in dtypes] if dtypes is not None else [False] * 3
    rounding = plan_1d(ctx, "cast_to_bf16", M * N) if bf16[2] and M * N else None
    if bf16[2] and beta != 0.0:
        raise ValueError("sgemm: beta != 0 needs a float32 C")

    def widen(a, is16):
        return (a.astype(xp.uint32) << 16).view(xp.float32) if is16 else a

    def run(a, b, out, bias):
        a, b = widen(a, bf16[0]), widen(b, bf16[1])
        r = xp.matmul(a.T if trans_a else a, b.T if trans_b else b)
        if bias is not None:
            r += bias[:, None] if bias_axis == 0 else bias[None, :]
        if beta != 0.0:
            r += beta32 * out
        if relu:
            xp.maximum(r, 0, out=r)
        if rounding is not None:
            rounding.fire((xp.ascontiguousarray(r, dtype=xp.float32), out, np.int32(M * N)))
        elif not bf16[2]:
            out[...] = r
    return HostGemm(run)
