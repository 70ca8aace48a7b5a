"""The pooling ops' entry points: ``B.max_pool2d``, ``B.avg_pool2d``, ``B.lp_pool2d`` and
their backwards: ``*_plan(backend, <the entry's arguments>)`` checks them and returns the
plan of the backend's kind (``reference.py``, ``cpu.py``, ``device.py``), which layers keep;
the entry point runs it once.

On device backends max-pool (forward and backward) also takes bf16 activations (uint16 bits,
:mod:`gpucnn.ops.storage`) and returns them: its makers take the activations' dtype after the
geometry, ``MAX_POOL.maker(kind)(ctx, g, dtype)`` (the reference and CPU makers ignore it).
Average and LP pooling are float only and refuse bf16 bits by name.
"""
from __future__ import annotations

import numpy as np

from ..dispatch import Op, api, bf16_activations, plain, with_ctx
from ..storage import is_bf16
from . import cpu, device, lp_norm_type, pool_geometry, reference

__all__ = ["MAX_POOL", "MAX_POOL_BACKWARD", "AVG_POOL", "AVG_POOL_BACKWARD", "LP_POOL",
           "LP_POOL_BACKWARD", "max_pool2d_plan", "max_pool2d_backward_plan", "avg_pool2d_plan",
           "avg_pool2d_backward_plan", "lp_pool2d_plan", "lp_pool2d_backward_plan"]



def _any_dtype(make):
    """The maker ``(ctx, g, dtype)`` of a float path ``make(ctx, g)`` that works in its
    arrays' own dtype (reference, CPU): the dtype, part of the plan's setup, is not needed."""
    return lambda ctx, g, dtype: make(ctx, g)


MAX_POOL = Op("max_pool2d", bf16_activations(_any_dtype(plain(reference.max_pool2d))),
              _any_dtype(with_ctx(cpu.max_pool2d)), device.max_pool2d)
MAX_POOL_BACKWARD = Op("max_pool2d_backward",
                       bf16_activations(_any_dtype(plain(reference.max_pool2d_backward))),
                       _any_dtype(with_ctx(cpu.max_pool2d_backward)),
                       device.max_pool2d_backward)
AVG_POOL = Op("avg_pool2d", plain(reference.avg_pool2d), device=device.avg_pool2d)
AVG_POOL_BACKWARD = Op("avg_pool2d_backward", plain(reference.avg_pool2d_backward),
                       device=device.avg_pool2d_backward)
LP_POOL = Op("lp_pool2d", plain(reference.lp_pool2d), device=device.lp_pool2d)
LP_POOL_BACKWARD = Op("lp_pool2d_backward", plain(reference.lp_pool2d_backward),
                      device=device.lp_pool2d_backward)

_SWITCHES = (np.dtype(np.int32),)


def _float_only(what, **arrays):
    """Average and LP pooling have no bf16 kernels: refuse bf16 bits by name (not as the
    backend check's bare 'must have dtype float32')."""
    for name, a in arrays.items():
        if hasattr(a, "dtype") and is_bf16(a):
            raise TypeError(f"{what}: {name} holds bf16 bits (uint16), but of the pooling ops "
                            f"only max_pool2d has bf16 kernels: pass {what} float32 "
                            f"(B.from_bf16, or gpucnn.ops.precision.bf16_to_float32 on the "
                            f"host, widens bf16 exactly)")


# ---- plans: checked once, kept by layers; the entry points run them once -----------------
def max_pool2d_plan(backend, x, kernel_size, stride=None, padding=0, dilation=1,
                    ceil_mode=False):
    backend.check(x, "x", 4, dtype="activation")
    g = pool_geometry(x.shape, kernel_size, stride, padding, dilation=dilation,
                      ceil_mode=ceil_mode)
    return backend.plan(MAX_POOL, (g, x.dtype), ("x", g.x_shape, (x.dtype,)))


def max_pool2d_backward_plan(backend, dy, switches, x_shape, kernel_size, stride=None,
                             padding=0, dilation=1, ceil_mode=False):
    g = pool_geometry(tuple(x_shape), kernel_size, stride, padding, dilation=dilation,
                      ceil_mode=ceil_mode)
    backend.check(dy, "dy", 4, shape=g.y_shape, dtype="activation")
    backend.check(switches, "switches", 4, dtype=np.int32, shape=g.y_shape)
    return backend.plan(MAX_POOL_BACKWARD, (g, dy.dtype), ("dy", g.y_shape, (dy.dtype,)),
                        ("switches", g.y_shape, _SWITCHES))


def avg_pool2d_plan(backend, x, kernel_size, stride=None, padding=0, ceil_mode=False,
                    count_include_pad=True, divisor_override=None):
    _float_only("avg_pool2d", x=x)
    backend.check(x, "x", 4)
    g = pool_geometry(x.shape, kernel_size, stride, padding, "avg_pool2d", ceil_mode=ceil_mode,
                      count_include_pad=count_include_pad, divisor_override=divisor_override)
    return backend.plan(AVG_POOL, (g,), ("x", g.x_shape, (x.dtype,)))


def avg_pool2d_backward_plan(backend, dy, x_shape, kernel_size, stride=None, padding=0,
                             ceil_mode=False, count_include_pad=True, divisor_override=None):
    g = pool_geometry(tuple(x_shape), kernel_size, stride, padding, "avg_pool2d",
                      ceil_mode=ceil_mode, count_include_pad=count_include_pad,
                      divisor_override=divisor_override)
    _float_only("avg_pool2d_backward", dy=dy)
    backend.check(dy, "dy", 4, shape=g.y_shape)
    return backend.plan(AVG_POOL_BACKWARD, (g,), ("dy", g.y_shape, (dy.dtype,)))


def lp_pool2d_plan(backend, x, norm_type, kernel_size, stride=None, ceil_mode=False):
    _float_only("lp_pool2d", x=x)
    backend.check(x, "x", 4)
    p = lp_norm_type(norm_type)
    g = pool_geometry(x.shape, kernel_size, stride, 0, "lp_pool2d", ceil_mode=ceil_mode)
    return backend.plan(LP_POOL, (p, g), ("x", g.x_shape, (x.dtype,)))


def lp_pool2d_backward_plan(backend, dy, x, y, norm_type, kernel_size, stride=None,
                            ceil_mode=False):
    _float_only("lp_pool2d_backward", dy=dy, x=x, y=y)
    backend.check(x, "x", 4)
    p = lp_norm_type(norm_type)
    g = pool_geometry(x.shape, kernel_size, stride, 0, "lp_pool2d", ceil_mode=ceil_mode)
    backend.check(y, "y", 4, shape=g.y_shape)
    backend.check(dy, "dy", 4, shape=g.y_shape)
    dt = (x.dtype,)
    return backend.plan(LP_POOL_BACKWARD, (p, g), ("dy", g.y_shape, dt), ("x", g.x_shape, dt),
                        ("y", g.y_shape, dt))


# ---- the functional API (PyTorch's F.max_pool2d / avg_pool2d / lp_pool2d) ----------------
@api
def max_pool2d(backend, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """(y, switches): switches[n, c, i, j] = h * W + w of the window's (first) maximum.
    Taps ``dilation`` apart; padding (-inf) at most half the kernel; ``ceil_mode`` rounds
    the output size up as long as the last window starts inside the input or the left
    padding."""
    return max_pool2d_plan(backend, x, kernel_size, stride, padding, dilation,
                           ceil_mode).run(x)


@api
def max_pool2d_backward(backend, dy, switches, x_shape, kernel_size, stride=None, padding=0,
                        dilation=1, ceil_mode=False):
    return max_pool2d_backward_plan(backend, dy, switches, x_shape, kernel_size, stride,
                                    padding, dilation, ceil_mode).run(dy, switches)


@api
def avg_pool2d(backend, x, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    """Average over each window. Divisor: ``divisor_override`` (a positive int) if given;
    else, with ``count_include_pad`` (the default), the window clipped to the padded
    input (kH * kW except for a ceil_mode window reaching past the right padding); else
    the number of its elements inside the input."""
    return avg_pool2d_plan(backend, x, kernel_size, stride, padding, ceil_mode,
                           count_include_pad, divisor_override).run(x)


@api
def avg_pool2d_backward(backend, dy, x_shape, kernel_size, stride=None, padding=0,
                        ceil_mode=False, count_include_pad=True, divisor_override=None):
    return avg_pool2d_backward_plan(backend, dy, x_shape, kernel_size, stride, padding,
                                    ceil_mode, count_include_pad, divisor_override).run(dy)


@api
def lp_pool2d(backend, x, norm_type, kernel_size, stride=None, ceil_mode=False):
    """Power-average pooling, exactly PyTorch's F.lp_pool2d: (avg_pool2d(x^p) * kH * kW)
    ^ (1/p) with p = norm_type (a finite number > 0; p = 2 is L2 pooling), no padding.
    That is the p-th root of the window's sum of x^p, except for a ceil_mode partial
    window of n elements, whose sum is scaled by kH * kW / n first. No abs: NaN where
    x^p is (a negative x, non-integer p) or where a window's sum is negative and p odd
    (its root)."""
    return lp_pool2d_plan(backend, x, norm_type, kernel_size, stride, ceil_mode).run(x)


@api
def lp_pool2d_backward(backend, dy, x, y, norm_type, kernel_size, stride=None,
                       ceil_mode=False):
    """dx of lp_pool2d given its input x and output y: each window passes
    dy * y * x^(p-1) / S to its elements, S its sum of x^p. Convention: a window whose
    S is 0 passes no gradient, and an element's gradient is 0 where the sum over its
    windows of dy * y / S is 0 (even if x^(p-1) is infinite there, x = 0 with p < 1)."""
    return lp_pool2d_backward_plan(backend, dy, x, y, norm_type, kernel_size, stride,
                                   ceil_mode).run(dy, x, y)
