"""Pooling on the device: launches of ``kernels/pool.cu`` (grid-stride, one thread per
element written; backwards are gathers: no atomics, deterministic). ``dev`` is a
:class:`~gpucnn.backends.device.DeviceBackend`; arguments arrive checked."""
from __future__ import annotations

import numpy as np

from ..launch import launch_1d

__all__ = ["max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
           "lp_pool2d", "lp_pool2d_backward"]


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


def max_pool2d(dev, x, g):
    y = dev.empty(g.y_shape, np.float32)
    switches = dev.empty(g.y_shape, np.int32)
    launch_1d(dev, "max_pool2d_forward", y.size, x, y, switches, *_geom_args(g),
              *_dilation(g), large_ok=_PLANES)
    return y, switches


def max_pool2d_backward(dev, dy, switches, g):
    dx = dev.empty(g.x_shape, np.float32)
    launch_1d(dev, "max_pool2d_backward", dx.size, dy, switches, dx, *_geom_args(g),
              *_dilation(g), large_ok=_PLANES)
    return dx


def avg_pool2d(dev, x, g):
    y = dev.empty(g.y_shape, np.float32)
    launch_1d(dev, "avg_pool2d_forward", y.size, x, y, *_geom_args(g), *_divisor_rule(g),
              large_ok=_PLANES)
    return y


def avg_pool2d_backward(dev, dy, g):
    dx = dev.empty(g.x_shape, np.float32)
    launch_1d(dev, "avg_pool2d_backward", dx.size, dy, dx, *_geom_args(g), *_divisor_rule(g),
              large_ok=_PLANES)
    return dx


def lp_pool2d(dev, x, p, g):
    y = dev.empty(g.y_shape, np.float32)
    launch_1d(dev, "lp_pool2d_forward", y.size, x, y, *_geom_args(g), np.float32(p),
              large_ok=_PLANES)
    return y


def lp_pool2d_backward(dev, dy, x, y, p, g):
    # Two gathers: the per-window ratio dy * y / S, then each pixel's sum of them.
    r = dev.empty(g.y_shape, np.float32)
    launch_1d(dev, "lp_pool2d_backward_ratio", r.size, dy, x, y, r, *_geom_args(g),
              np.float32(p), large_ok=_PLANES)
    dx = dev.empty(g.x_shape, np.float32)
    launch_1d(dev, "lp_pool2d_backward", dx.size, r, x, dx, *_geom_args(g), np.float32(p),
              large_ok=_PLANES)
    return dx
