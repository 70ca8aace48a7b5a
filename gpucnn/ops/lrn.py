"""Cross-channel local response normalisation, AlexNet's (``kernels/lrn.cu``; tests:
``tests/ops/test_lrn.py``).

y = x / scale**beta with scale = k + alpha/size * (sum of x^2 over the ``size`` neighbouring
channels: PyTorch's window, size//2 before and (size-1)//2 after); forward also returns
scale, which the backward reuses. On a device x, y, dy and dx may be bf16 activations
(gpucnn/ops/storage.py; scale stays float32, and the backward recomputes y from x and scale).
"""
from __future__ import annotations

import math

import numpy as np

from .common import hyper
from .dispatch import Op, api, bf16_activations
from .launch import plan_1d
from .storage import FLOAT32, io_kernel, is_bf16

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


def local_response_norm_device(ctx, shape, size, alpha, beta, k, dtype):
    launch, dims = _dims(ctx, io_kernel("lrn_forward", dtype), shape, size)
    tail, empty = dims + (np.float32(alpha / size), np.float32(beta), np.float32(k)), ctx.empty

    def run(x):
        y, scale = empty(shape, dtype), empty(shape, np.float32)
        launch.fire((x, y, scale, *tail))
        return y, scale
    return run


def local_response_norm_backward_device(ctx, shape, size, alpha, beta, k, dtype):
    # k is already folded into scale. The bf16 kernel recomputes y from x and scale.
    launch, dims = _dims(ctx, io_kernel("lrn_backward", dtype), shape, size)
    tail = dims + (np.float32(beta), np.float32(2.0 * alpha * beta / size))
    empty, stored_y = ctx.empty, not is_bf16(dtype)

    def run(dy, x, y, scale):
        dx = empty(shape, dtype)
        launch.fire((dy, x, y, scale, dx, *tail) if stored_y else (dy, x, scale, dx, *tail))
        return dx
    return run


# setup: (shape, size, alpha, beta, k, the activations' dtype)
LRN = Op("local_response_norm", bf16_activations(
    lambda ctx, shape, *hp: lambda x: local_response_norm_reference(x, *hp[:-1])),
         device=local_response_norm_device)
def _backward_reference(ctx, shape, size, alpha, beta, k, dtype):
    if not is_bf16(dtype):
        return lambda *a: local_response_norm_backward_reference(*a, size, alpha, beta, k)

    def run(dy, x, y, scale):  # as the bf16 kernel: y recomputed from x and scale
        y = (x * scale ** -beta).astype(x.dtype)
        return local_response_norm_backward_reference(dy, x, y, scale, size, alpha, beta, k)
    return run


LRN_BACKWARD = Op("local_response_norm_backward", bf16_activations(_backward_reference),
                  device=local_response_norm_backward_device)


def lrn_hyper(size, alpha, beta, k):
    """(size, alpha, beta, k) checked: a positive int size, finite numbers, k > 0."""
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
        raise ValueError(f"local_response_norm: size must be a positive int, got {size!r}")
    op = "local_response_norm"
    return (int(size), hyper(op, "alpha", alpha), hyper(op, "beta", beta),
            hyper(op, "k", k, 0, low_open=True))


def local_response_norm_plan(backend, x, size=5, alpha=1e-4, beta=0.75, k=1.0):
    backend.check(x, "x", 4, dtype="activation")
    return backend.plan(LRN, (x.shape, *lrn_hyper(size, alpha, beta, k), x.dtype),
                        ("x", x.shape, (x.dtype,)))


def local_response_norm_backward_plan(backend, dy, x, y, scale, size=5, alpha=1e-4, beta=0.75,
                                      k=1.0):
    """dy, x and y share x's dtype (float, or bf16 bits on a device); scale is float."""
    backend.check(x, "x", 4, dtype="activation")
    spec = (x.shape, (x.dtype,))
    scale_dtype = FLOAT32 if is_bf16(x) else x.dtype
    return backend.plan(LRN_BACKWARD, (x.shape, *lrn_hyper(size, alpha, beta, k), x.dtype),
                        ("dy", *spec), ("x", *spec), ("y", *spec),
                        ("scale", x.shape, (scale_dtype,)))


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
