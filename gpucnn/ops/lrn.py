"""Cross-channel local response normalisation, AlexNet's (``kernels/lrn.cu``; tests:
``tests/ops/test_lrn.py``).

y = x / scale**beta with scale = k + alpha/size * (sum of x^2 over the ``size`` neighbouring
channels: PyTorch's window, size//2 before and (size-1)//2 after); forward also returns
scale, which the backward reuses.
"""
from __future__ import annotations

import math

import numpy as np

from .common import hyper
from .dispatch import Op, api
from .launch import plan_1d

__all__ = ["local_response_norm_reference", "local_response_norm_backward_reference",
           "local_response_norm_device", "local_response_norm_backward_device", "LRN",
           "LRN_BACKWARD", "lrn_hyper", "local_response_norm_plan",
           "local_response_norm_backward_plan"]


def _channel_window_sum(a, before, after):
    """out[:, c] = sum of a[:, c - before .. c + after] (zeros outside the channels)."""
    C = a.shape[1]
    padded = np.pad(a, ((0, 0), (before, after), (0, 0), (0, 0)))
    out = np.zeros_like(a)
    for t in range(before + after + 1):
        out += padded[:, t:t + C]
    return out


def local_response_norm_reference(x, size, alpha, beta, k):
    sq = _channel_window_sum(x * x, size // 2, (size - 1) // 2)
    scale = (k + (alpha / size) * sq).astype(x.dtype)
    return (x * scale ** -beta).astype(x.dtype), scale


def local_response_norm_backward_reference(dy, x, y, scale, size, alpha, beta, k):
    # dx_i = dy_i s_i^-b - (2ab/size) x_i * sum_{j: i in window(j)} dy_j y_j / s_j;
    # i lies in j's window exactly when j lies in the mirrored window around i.
    t = _channel_window_sum(dy * y / scale, (size - 1) // 2, size // 2)
    dx = dy * scale ** -beta - (2.0 * alpha * beta / size) * x * t
    return dx.astype(x.dtype)


def _dims(ctx, name, shape, size):
    n = math.prod(shape)
    return plan_1d(ctx, name, n), tuple(np.int32(v) for v in (*shape, size))


def local_response_norm_device(ctx, shape, size, alpha, beta, k):
    launch, dims = _dims(ctx, "lrn_forward", shape, size)
    tail, empty = dims + (np.float32(alpha / size), np.float32(beta), np.float32(k)), ctx.empty

    def run(x):
        y, scale = empty(shape, np.float32), empty(shape, np.float32)
        launch.fire((x, y, scale, *tail))
        return y, scale
    return run


def local_response_norm_backward_device(ctx, shape, size, alpha, beta, k):
    # k is already folded into scale.
    launch, dims = _dims(ctx, "lrn_backward", shape, size)
    tail = dims + (np.float32(beta), np.float32(2.0 * alpha * beta / size))
    empty = ctx.empty

    def run(dy, x, y, scale):
        dx = empty(shape, np.float32)
        launch.fire((dy, x, y, scale, dx, *tail))
        return dx
    return run


LRN = Op("local_response_norm",
         lambda ctx, shape, *hp: lambda x: local_response_norm_reference(x, *hp),
         device=local_response_norm_device)
LRN_BACKWARD = Op("local_response_norm_backward",
                  lambda ctx, shape, *hp: lambda *a: local_response_norm_backward_reference(
                      *a, *hp), device=local_response_norm_backward_device)


def lrn_hyper(size, alpha, beta, k):
    """(size, alpha, beta, k) checked: a positive int size, finite numbers, k > 0."""
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
        raise ValueError(f"local_response_norm: size must be a positive int, got {size!r}")
    op = "local_response_norm"
    return (int(size), hyper(op, "alpha", alpha), hyper(op, "beta", beta),
            hyper(op, "k", k, 0, low_open=True))


def local_response_norm_plan(backend, x, size=5, alpha=1e-4, beta=0.75, k=1.0):
    backend.check(x, "x", 4)
    return backend.plan(LRN, (x.shape, *lrn_hyper(size, alpha, beta, k)),
                        ("x", x.shape, (x.dtype,)))


def local_response_norm_backward_plan(backend, dy, x, y, scale, size=5, alpha=1e-4, beta=0.75,
                                      k=1.0):
    backend.check(x, "x", 4)
    spec = (x.shape, (x.dtype,))
    return backend.plan(LRN_BACKWARD, (x.shape, *lrn_hyper(size, alpha, beta, k)),
                        ("dy", *spec), ("x", *spec), ("y", *spec), ("scale", *spec))


@api
def local_response_norm(backend, x, size=5, alpha=1e-4, beta=0.75, k=1.0):
    """(y, scale): y = x / scale**beta, scale = k + alpha/size * sum of x^2 over the
    ``size`` neighbouring channels (PyTorch's window: size//2 before, (size-1)//2 after)."""
    return local_response_norm_plan(backend, x, size, alpha, beta, k).run(x)


@api
def local_response_norm_backward(backend, dy, x, y, scale, size=5, alpha=1e-4, beta=0.75,
                                 k=1.0):
    return local_response_norm_backward_plan(backend, dy, x, y, scale, size, alpha, beta,
                                             k).run(dy, x, y, scale)
