"""Single-precision GEMM on the device: ``kernels/sgemm.cu`` (the tiled, register-blocked,
batched SGEMM with a bias/beta/ReLU epilogue, and sgemm_sum_partials), used by every
convolution and fully connected layer. Its plain reference is :func:`reference`; tests in
``tests/ops/test_gemm.py``.

The tile constants are read from the ``#define SGEMM_*`` lines of ``kernels/sgemm.cu`` (via
the toolchain) and checked for consistency here, so the grid computed below and the kernel
cannot disagree. With ``dev.use_cublas`` (the ``cuda`` backend, GPUCNN_CUBLAS=1) ``gemm``
runs ``xp.matmul`` (cuBLAS) instead, for comparison benchmarks.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..toolchain import source_defines
from ..toolchain.limits import GRID_DIM_MAX
from .launch import ceil_div, i32, launch_1d

__all__ = ["sgemm_tile", "sgemm_launch", "sgemm", "sum_partials", "gemm", "reference"]


@lru_cache(maxsize=None)
def sgemm_tile():
    """{BM, BN, BK, TM, TN, THREADS, PAD} from kernels/sgemm.cu, checked for consistency."""
    t = dict(source_defines("sgemm.cu", "SGEMM"))
    missing = [k for k in ("BM", "BN", "BK", "TM", "TN", "THREADS") if k not in t]
    if missing:
        raise RuntimeError(f"kernels/sgemm.cu lacks #define SGEMM_{missing[0]}")
    if (t["BM"] // t["TM"]) * (t["BN"] // t["TN"]) != t["THREADS"] or t["BM"] % t["TM"] \
            or t["BN"] % t["TN"]:
        raise RuntimeError(f"kernels/sgemm.cu: SGEMM tile {t} is inconsistent: THREADS must be "
                           f"(BM/TM)*(BN/TN)")
    if (t["BM"] * t["BK"]) % t["THREADS"] or (t["BN"] * t["BK"]) % t["THREADS"]:
        raise RuntimeError(f"kernels/sgemm.cu: SGEMM tile {t}: BM*BK and BN*BK must be "
                           f"multiples of THREADS")
    return t


def sgemm_launch(M, N, batch_y=1, batch_z=1):
    """(grid, block) of an sgemm launch computing ``batch_y * batch_z`` M x N products."""
    t = sgemm_tile()
    tiles = ceil_div(M, t["BM"]) * ceil_div(N, t["BN"])
    if batch_y > GRID_DIM_MAX[1] or batch_z > GRID_DIM_MAX[2]:
        raise ValueError(f"sgemm: batch ({batch_y}, {batch_z}) exceeds the grid limit "
                         f"{GRID_DIM_MAX[1:]}")
    return (max(1, tiles), max(1, int(batch_y)), max(1, int(batch_z))), (t["THREADS"], 1, 1)


def sgemm(dev, a, b, c, M, N, K, lda, ldb, ldc, trans_a=False, trans_b=False,
          batch_y=1, batch_z=1, a_y=0, a_z=0, a_r=0, b_y=0, b_z=0, b_r=0, c_y=0, c_z=0,
          red_per_z=1, red_total=None, bias=None, bias_y=0, bias_axis=1, relu=False,
          beta=0.0):
    """One launch of the ``sgemm`` kernel (see kernels/sgemm.cu for the semantics of every
    argument). ``a``, ``b``, ``c`` are arrays whose data start at the first matrix;
    ``bias_axis`` 0: one bias per row of C (length M), 1: one per column (length N)."""
    if red_total is None:
        red_total = red_per_z * batch_z
    grid, block = sgemm_launch(M, N, batch_y, batch_z)
    bias_mode = 0 if bias is None else (1 if bias_axis == 0 else 2)
    args = (a, b, c, c if bias is None else bias,
            i32(M, "M"), i32(N, "N"), i32(K, "K"),
            i32(lda, "lda"), i32(ldb, "ldb"), i32(ldc, "ldc"),
            np.int32(bool(trans_a)), np.int32(bool(trans_b)),
            i32(a_y, "a_stride_y"), i32(a_z, "a_stride_z"), i32(a_r, "a_stride_r"),
            i32(b_y, "b_stride_y"), i32(b_z, "b_stride_z"), i32(b_r, "b_stride_r"),
            i32(c_y, "c_stride_y"), i32(c_z, "c_stride_z"), i32(bias_y, "bias_stride"),
            i32(red_per_z, "red_per_z"), i32(red_total, "red_total"),
            np.int32(bias_mode), np.int32(bool(relu)), np.float32(beta))
    # Each operand's in-matrix offsets are int32 in the kernel.
    i32((M if not trans_a else K) * lda, "A extent")
    i32((K if not trans_b else N) * ldb, "B extent")
    i32(M * ldc, "C extent")
    dev.kernel("sgemm")(grid, block, args)


def sum_partials(dev, parts, out, count, nparts, beta):
    """out (+)= the sum of ``nparts`` partial results of ``count`` floats, in part order."""
    launch_1d(dev, "sgemm_sum_partials", count, parts, out, i32(count, "count"),
              np.int32(nparts), i32(count, "part stride"), np.float32(beta))


def _check_operands(a, b, trans_a, trans_b, bias, bias_axis):
    for arr, nm in ((a, "a"), (b, "b")):
        if arr.ndim != 2:
            raise ValueError(f"gemm: {nm} must be 2-D, got shape {tuple(arr.shape)}")
    M, K = (a.shape[1], a.shape[0]) if trans_a else a.shape
    Kb, N = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if K != Kb:
        raise ValueError(f"gemm: inner dimensions differ: op(a) is {M}x{K}, op(b) is {Kb}x{N}")
    if bias is not None and bias.shape != ((M,) if bias_axis == 0 else (N,)):
        raise ValueError(f"gemm: bias must have shape {(M,) if bias_axis == 0 else (N,)}")
    return M, N, K


def reference(a, b, trans_a=False, trans_b=False, bias=None, bias_axis=1, relu=False,
              c=None, beta=0.0):
    """The definition: op(a) @ op(b) (+ bias) (+ beta * c) (ReLU), in the inputs' dtype."""
    _check_operands(a, b, trans_a, trans_b, bias, bias_axis)
    if beta != 0.0 and c is None:
        raise ValueError("gemm reference: beta != 0 needs c")
    r = (a.T if trans_a else a) @ (b.T if trans_b else b)
    if bias is not None:
        r = r + (bias[:, None] if bias_axis == 0 else bias[None, :])
    if beta != 0.0:
        r = r + beta * c
    return np.maximum(r, 0) if relu else r


def gemm(dev, a, b, trans_a=False, trans_b=False, bias=None, bias_axis=1, relu=False,
         out=None, beta=0.0):
    """C = op(a) @ op(b) (+ bias) (+ beta * out) (ReLU) for 2-D float32 C-contiguous device
    arrays. Returns C (``out`` if given)."""
    xp = dev.xp
    for arr, nm in ((a, "a"), (b, "b")):
        if arr.ndim != 2 or arr.dtype != np.float32 or not arr.flags.c_contiguous:
            raise ValueError(f"gemm: {nm} must be a 2-D C-contiguous float32 array")
    M, N, K = _check_operands(a, b, trans_a, trans_b, bias, bias_axis)
    # The kernel reads raw float32 memory: a float64 or strided bias/out would be misread.
    if bias is not None and (bias.dtype != np.float32 or not bias.flags.c_contiguous):
        raise ValueError("gemm: bias must be a C-contiguous float32 array")
    if out is None:
        if beta != 0.0:
            raise ValueError("gemm: beta != 0 needs out")
        out = dev.empty((M, N), np.float32)
    elif (out.shape != (M, N) or out.dtype != np.float32
          or not out.flags.c_contiguous):
        raise ValueError(f"gemm: out must be a C-contiguous float32 ({M}, {N}) array")
    if dev.use_cublas:
        r = xp.matmul(a.T if trans_a else a, b.T if trans_b else b)
        if bias is not None:
            r += bias[:, None] if bias_axis == 0 else bias[None, :]
        if beta != 0.0:
            r += np.float32(beta) * out
        if relu:
            xp.maximum(r, 0, out=r)
        out[...] = r
        return out
    if M == 0 or N == 0:
        return out
    sgemm(dev, a, b, out, M, N, K, lda=a.shape[1], ldb=b.shape[1], ldc=N, trans_a=trans_a,
          trans_b=trans_b, bias=bias, bias_axis=bias_axis, relu=relu, beta=beta)
    return out
