"""The convolution ops' entry points: ``B.conv2d``, ``B.conv2d_backward`` and the fused
``B.conv2d_relu_maxpool`` (+ backward). ``*_plan(backend, <the entry's arguments>)`` checks
the arguments, lets the backend's selector pick the algorithm (:mod:`.selector`) and returns
the plan of the backend's kind — the plain definition (``reference.py``), or the algorithm's
plan factory from the registry (:mod:`.algos`) — which layers keep; the entry point runs it
once.

The fused op is composed of the implementations (conv with ReLU, then max-pool; backward:
ReLU mask, pool scatter, conv backward), never of the public entry points, so nothing is
checked or chosen twice; on the CPU the ``wide`` and ``direct`` algorithms have fused paths of
their own (``wide_fused.py``, ``direct.py``), which may decline a geometry (they return None),
and the composition runs then.

Activations (x, y, dy, dx) are float32, or — on a device backend computing in precision bf16 —
bf16 bits (uint16 arrays, :mod:`gpucnn.ops.storage`): then the implicit-GEMM kernels that
read and write bf16 (``*_bf16io``) run whatever ``algo`` says, the weights, bias and their
gradients staying float32. The activations' dtype is part of every plan's setup (the last
element), so float32 and bf16 calls of one layer shape get plans of their own.
"""
from __future__ import annotations

import numpy as np

from .. import activation
from ..dispatch import Op, api, bf16_activations, grads_into, into as _into, rounded
from ..pool import api as pool_api
from ..pool import pool_geometry
from ..storage import common_dtype, is_bf16
from . import algos, conv_geometry, direct, reference, wide_fused


__all__ = ["CONV", "CONV_BACKWARD", "CONV_RELU_MAXPOOL", "CONV_RELU_MAXPOOL_BACKWARD",
           "conv2d_plan", "conv2d_backward_plan", "conv2d_relu_maxpool_plan",
           "conv2d_relu_maxpool_backward_plan"]


def _algorithm(kind, direction):
    """The plan factory of the named algorithm of a backend kind, for CONV / CONV_BACKWARD;
    the activations' dtype reaches the algorithm only for bf16 (the implicit GEMM's
    ``dtype`` argument: no other algorithm takes bf16, :func:`_activations`)."""
    def make(ctx, g, a, b, name, dtype):
        extra = (dtype,) if is_bf16(dtype) else ()
        return getattr(algos.get(kind, name), direction)(ctx, g, a, b, *extra)
    return make


CONV = Op("conv2d",
          bf16_activations(rounded(lambda ctx, g, relu, has_bias, name, dtype: (
              lambda x, w, b: reference.conv2d(x, w, b, g, relu)), 2)),
          _algorithm("cpu", "forward"), _algorithm("device", "forward"))
CONV_BACKWARD = Op("conv2d_backward",
                   bf16_activations(grads_into(rounded(
                       lambda ctx, g, need_dx, need_dw, name, dtype: (
                           lambda dy, x, w: reference.conv2d_backward(dy, x, w, g, need_dx,
                                                                      need_dw)),
                       3, (0, 2, 3)))),
                   grads_into(_algorithm("cpu", "backward")), _algorithm("device", "backward"))


def _composed(kind):
    """conv (ReLU fused) then max-pool, and the backward: ReLU mask, pool, conv."""
    def forward(ctx, g, pg, has_bias, name, dtype):
        conv = CONV.maker(kind)(ctx, g, True, has_bias, name, dtype)
        pool = pool_api.MAX_POOL.maker(kind)(ctx, pg, dtype)
        return lambda x, w, b: pool(conv(x, w, b))

    def backward(ctx, g, pg, need_dx, need_dw, name, dtype):
        relu = activation.RELU_BACKWARD.maker(kind)(ctx, pg.y_shape, dtype)
        pool = pool_api.MAX_POOL_BACKWARD.maker(kind)(ctx, pg, dtype)
        conv = CONV_BACKWARD.maker(kind)(ctx, g, need_dx, need_dw, name, dtype)
        return lambda dy, switches, y, x, w, dw_out, db_out: conv(
            pool(relu(dy, y), switches), x, w, dw_out, db_out)
    return forward, backward


# The CPU algorithms with a fused path of their own: (forward, backward); each returns None
# for a geometry it does not take.
_CPU_FUSED = {"wide": (wide_fused.conv2d_relu_maxpool, wide_fused.conv2d_relu_maxpool_backward),
              "direct": (direct.conv2d_relu_maxpool, direct.conv2d_relu_maxpool_backward)}


def _cpu_fused():
    composed_forward, composed_backward = _composed("cpu")

    def forward(rt, g, pg, has_bias, name, dtype):
        composed = composed_forward(rt, g, pg, has_bias, name, dtype)
        fused = _CPU_FUSED.get(name)
        if fused is None:
            return composed

        def run(x, w, b):
            out = fused[0](rt, x, w, b, g, pg)
            return composed(x, w, b) if out is None else out
        return run

    def backward(rt, g, pg, need_dx, need_dw, name, dtype):
        composed = composed_backward(rt, g, pg, need_dx, need_dw, name, dtype)
        fused = _CPU_FUSED.get(name)
        if fused is None:
            return composed

        def run(dy, switches, y, x, w, dw_out, db_out):
            out = fused[1](rt, dy, switches, y, x, w, g, pg, need_dx, need_dw)
            if out is None:
                return composed(dy, switches, y, x, w, dw_out, db_out)
            return out[0], _into(out[1], dw_out), _into(out[2], db_out)
        return run
    return forward, backward


_REF, _CPU, _DEV = _composed("reference"), _cpu_fused(), _composed("device")
CONV_RELU_MAXPOOL = Op("conv2d_relu_maxpool", _REF[0], _CPU[0], _DEV[0])
CONV_RELU_MAXPOOL_BACKWARD = Op("conv2d_relu_maxpool_backward", _REF[1], _CPU[1], _DEV[1])
_SWITCHES = (np.dtype(np.int32),)


def _geometry(backend, x, w, b, stride, padding, dilation, groups):
    backend.check(x, "x", 4, dtype="activation")
    backend.check(w, "w", 4)
    g = conv_geometry(x.shape, w.shape, stride, padding, dilation, groups)
    if b is not None:
        backend.check(b, "b", 1, shape=(g.F,))
    return g


def _grad_out_specs(g, w):
    """Where a backward's run writes dw and db (None: new arrays), e.g. views of a model's
    flat gradient buffer."""
    wt = (w.dtype,)
    return ("dw_out", g.w_shape, wt, True), ("db_out", (g.F,), wt, True)


def _forward_specs(g, x, w, b):
    wt = (w.dtype,)
    return (("x", g.x_shape, (x.dtype,)), ("w", g.w_shape, wt),
            ("b", (g.F,), wt) if b is not None else None)


def _select(backend, direction, g, algo, dtype, run, *needs):
    """The algorithm of a call: the selector's choice, except for bf16 activations, which
    only the implicit GEMM reads and writes (nothing timed; recorded as the selector records
    its choices, so the metrics and checkpoints name it); another algorithm named per call is
    a ValueError."""
    selector = backend.conv_selector
    if not is_bf16(dtype):
        return selector.select(direction, g, algo, run, *needs)
    name = selector.request(algo, g)
    if algo is not None and name not in (algos.AUTO, "implicit"):
        ok = "'implicit' or 'auto'" if backend.kind == "device" else "'auto'"
        raise ValueError(f"conv2d: algo={algo!r} does not take bf16 activations (uint16): they "
                         f"run on implicit GEMM only (algo={ok})")
    if selector.policy != "fixed":
        selector.chosen[algos.shape_key(direction, g, *needs)] = "implicit"
    return "implicit"


# ---- plans: checked and chosen once, kept by layers; the entry points run them once ------
def conv2d_plan(backend, x, w, b=None, stride=1, padding=0, dilation=1, groups=1, relu=False,
                algo=None):
    g = _geometry(backend, x, w, b, stride, padding, dilation, groups)
    relu, specs = bool(relu), _forward_specs(g, x, w, b)
    dtype = common_dtype("conv2d", x=x)

    def planned(name):
        return backend.plan(CONV, (g, relu, b is not None, name, dtype), *specs)
    name = _select(backend, "forward", g, algo, dtype, lambda n: planned(n).run(x, w, b))
    return planned(name)


def conv2d_backward_plan(backend, dy, x, w, stride=1, padding=0, dilation=1, groups=1,
                         need_dx=True, need_dw=True, algo=None):
    g = _geometry(backend, x, w, None, stride, padding, dilation, groups)
    backend.check(dy, "dy", 4, dtype="activation", shape=g.y_shape)
    dtype = common_dtype("conv2d", x=x, dy=dy)
    need_dx, need_dw = bool(need_dx), bool(need_dw)
    specs = (("dy", g.y_shape, (dy.dtype,)), ("x", g.x_shape, (x.dtype,)),
             ("w", g.w_shape, (w.dtype,)), *_grad_out_specs(g, w))

    def planned(name):
        return backend.plan(CONV_BACKWARD, (g, need_dx, need_dw, name, dtype), *specs)
    name = _select(backend, "backward", g, algo, dtype,
                   lambda n: planned(n).run(dy, x, w, None, None), need_dx, need_dw)
    return planned(name)


def conv2d_relu_maxpool_plan(backend, x, w, b=None, stride=1, padding=0, dilation=1,
                             groups=1, kernel_size=2, pool_stride=None, pool_padding=0,
                             algo=None):
    g = _geometry(backend, x, w, b, stride, padding, dilation, groups)
    pg = pool_geometry(g.y_shape, kernel_size, pool_stride, pool_padding)
    specs = _forward_specs(g, x, w, b)
    dtype = common_dtype("conv2d", x=x)
    # Timing (cuda's auto) runs the plain convolution: the algorithms differ only there.
    name = _select(backend, "forward", g, algo, dtype, lambda n: backend.plan(
        CONV, (g, True, b is not None, n, dtype), *specs).run(x, w, b))
    return backend.plan(CONV_RELU_MAXPOOL, (g, pg, b is not None, name, dtype), *specs)


def conv2d_relu_maxpool_backward_plan(backend, dy, switches, y, x, w, stride=1, padding=0,
                                      dilation=1, groups=1, kernel_size=2, pool_stride=None,
                                      pool_padding=0, need_dx=True, need_dw=True, algo=None):
    g = _geometry(backend, x, w, None, stride, padding, dilation, groups)
    pg = pool_geometry(g.y_shape, kernel_size, pool_stride, pool_padding)
    backend.check(y, "y", 4, dtype="activation", shape=pg.y_shape)
    backend.check(dy, "dy", 4, dtype="activation", shape=pg.y_shape)
    backend.check(switches, "switches", 4, dtype=np.int32, shape=pg.y_shape)
    dtype = common_dtype("conv2d", x=x, dy=dy, y=y)
    need_dx, need_dw = bool(need_dx), bool(need_dw)
    dt = (x.dtype,)
    conv_specs = (("dy", g.y_shape, dt), ("x", g.x_shape, dt), ("w", g.w_shape, (w.dtype,)),
                  *_grad_out_specs(g, w))
    # Timing (cuda's auto) runs the plain convolution backward on a stand-in dy of the conv
    # output's shape: the algorithms differ only there.
    name = _select(
        backend, "backward", g, algo, dtype, lambda n: backend.plan(
            CONV_BACKWARD, (g, need_dx, need_dw, n, dtype), *conv_specs).run(
            backend.zeros(g.y_shape, dy.dtype), x, w, None, None), need_dx, need_dw)
    return backend.plan(CONV_RELU_MAXPOOL_BACKWARD, (g, pg, need_dx, need_dw, name, dtype),
                        ("dy", pg.y_shape, (dy.dtype,)), ("switches", pg.y_shape, _SWITCHES),
                        ("y", pg.y_shape, (y.dtype,)), *conv_specs[1:])


# ---- the functional API ------------------------------------------------------------------
@api
def conv2d(backend, x, w, b=None, stride=1, padding=0, dilation=1, groups=1, relu=False,
           algo=None):
    """y = conv(x, w) + b, optionally followed by ReLU fused in the same pass. ``algo``:
    a name of :mod:`gpucnn.ops.conv.algos` or "auto" (default: $GPUCNN_CONV_ALGO, else
    "auto")."""
    return conv2d_plan(backend, x, w, b, stride, padding, dilation, groups, relu,
                       algo).run(x, w, b)


@api
def conv2d_backward(backend, dy, x, w, stride=1, padding=0, dilation=1, groups=1,
                    need_dx=True, need_dw=True, algo=None):
    """Gradients (dx, dw, db) of conv2d with respect to its input, weight and bias.

    ``need_dx=False`` skips the input gradient (a network's first layer needs none) and
    ``need_dw=False`` the weight and bias gradients; skipped ones are returned as None.
    ``algo`` as for conv2d (chosen separately from the forward's)."""
    return conv2d_backward_plan(backend, dy, x, w, stride, padding, dilation, groups, need_dx,
                                need_dw, algo).run(dy, x, w, None, None)


@api
def conv2d_relu_maxpool(backend, x, w, b=None, stride=1, padding=0, dilation=1, groups=1,
                        kernel_size=2, pool_stride=None, pool_padding=0, algo=None):
    """(y, switches) of max_pool2d(relu(conv2d(x, w, b))): the pooled output and the
    pool's switches into the conv output planes, exactly as the three ops give them.
    ``algo``: the convolution's, as for conv2d."""
    return conv2d_relu_maxpool_plan(backend, x, w, b, stride, padding, dilation, groups,
                                    kernel_size, pool_stride, pool_padding, algo).run(x, w, b)


@api
def conv2d_relu_maxpool_backward(backend, dy, switches, y, x, w, stride=1, padding=0,
                                 dilation=1, groups=1, kernel_size=2, pool_stride=None,
                                 pool_padding=0, need_dx=True, need_dw=True, algo=None):
    """(dx, dw, db) of conv2d_relu_maxpool, given the gradient ``dy`` of its pooled
    output ``y`` and the switches. The ReLU mask is taken on the pooled output: a switch
    points at a conv output equal to the window's pooled value, so ``y > 0`` there is the
    ReLU's own ``relu_out > 0`` at every position that receives a gradient. ``algo``: the
    convolution backward's, as for conv2d_backward."""
    return conv2d_relu_maxpool_backward_plan(
        backend, dy, switches, y, x, w, stride, padding, dilation, groups, kernel_size,
        pool_stride, pool_padding, need_dx, need_dw, algo).run(dy, switches, y, x, w, None, None)
