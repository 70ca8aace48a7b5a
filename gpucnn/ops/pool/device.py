"""Pooling on the device: plans of ``kernels/pool.cu`` launches (grid-stride, one thread per
element written; backwards are gathers: no atomics, deterministic). Each function takes the
device context and the checked geometry (max-pool: and the activations' dtype, float32 or bf16
bits, which picks the ``_bf16io`` kernel) and returns the run of one call."""
from __future__ import annotations

import math

import numpy as np

from ..launch import plan_1d
from ..storage import io_kernel

__all__ = ["max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
           "lp_pool2d", "lp_pool2d_backward"]

_F32, _I32 = np.float32, np.int32

# The tensors the pool kernels address through 64-bit plane offsets (kernels/common.cuh), which
# may therefore hold 2^31 elements or more; the one a kernel writes is bounded by its grid.
_PLANES = ("x", "dy", "switches", "r")


def _geom_args(g):
    """The geometry arguments shared by every pooling kernel, in their C order."""
    return tuple(np.int32(v) for v in (g.N, g.C, g.H, g.W, g.Ho, g.Wo,
                                       g.kh, g.kw, g.sh, g.sw, g.ph, g.pw))


def _dilation(g):
    return np.int32(g.dh), np.int32(g.dw)


def _divisor_rule(g):
    """count_include_pad, divisor_override (0: none) as the avg kernels take them."""
    return np.int32(g.count_include_pad), np.int32(g.divisor_override or 0)


def _plan(ctx, name, shape):
    return plan_1d(ctx, name, math.prod(shape), large_ok=_PLANES)


def _one_output(ctx, name, shape, tail, dtype=_F32):
    """``run(*inputs) -> out``: kernel ``name`` writing one array of ``shape`` and ``dtype``,
    its arguments the inputs, the output, then ``tail``."""
    launch, empty = _plan(ctx, name, shape), ctx.empty

    def run(*inputs):
        out = empty(shape, dtype)
        launch.fire((*inputs, out, *tail))
        return out
    return run


def max_pool2d(ctx, g, dtype):
    dtype, ys = np.dtype(dtype), g.y_shape
    launch, empty = _plan(ctx, io_kernel("max_pool2d_forward", dtype), ys), ctx.empty
    tail = _geom_args(g) + _dilation(g)

    def run(x):
        y, switches = empty(ys, dtype), empty(ys, _I32)
        launch.fire((x, y, switches, *tail))
        return y, switches
    return run


def max_pool2d_backward(ctx, g, dtype):
    dtype = np.dtype(dtype)
    return _one_output(ctx, io_kernel("max_pool2d_backward", dtype), g.x_shape,
                       _geom_args(g) + _dilation(g), dtype)


def avg_pool2d(ctx, g):
    return _one_output(ctx, "avg_pool2d_forward", g.y_shape, _geom_args(g) + _divisor_rule(g))


def avg_pool2d_backward(ctx, g):
    return _one_output(ctx, "avg_pool2d_backward", g.x_shape, _geom_args(g) + _divisor_rule(g))


def lp_pool2d(ctx, p, g):
    return _one_output(ctx, "lp_pool2d_forward", g.y_shape, _geom_args(g) + (np.float32(p),))


def lp_pool2d_backward(ctx, p, g):
    # Two gathers: the per-window ratio dy * y / S, then each pixel's sum of them.
    tail = _geom_args(g) + (np.float32(p),)
    ratio = _one_output(ctx, "lp_pool2d_backward_ratio", g.y_shape, tail)
    gather = _one_output(ctx, "lp_pool2d_backward", g.x_shape, tail)

    def run(dy, x, y):
        return gather(ratio(dy, x, y), x)
    return run
