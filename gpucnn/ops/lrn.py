"""Cross-channel local response normalisation, AlexNet's (``kernels/lrn.cu``; tests:
``tests/ops/test_lrn.py``).

y = x / scale**beta with scale = k + alpha/size * (sum of x^2 over the ``size`` neighbouring
channels: PyTorch's window, size//2 before and (size-1)//2 after); forward also returns
scale, which the backward reuses.
"""
from __future__ import annotations

import numpy as np

from .launch import launch_1d

__all__ = ["local_response_norm_reference", "local_response_norm_backward_reference",
           "local_response_norm_device", "local_response_norm_backward_device"]


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


def local_response_norm_device(dev, x, size, alpha, beta, k):
    N, C, H, W = x.shape
    y = dev.empty(x.shape, np.float32)
    scale = dev.empty(x.shape, np.float32)
    launch_1d(dev, "lrn_forward", x.size, x, y, scale,
              np.int32(N), np.int32(C), np.int32(H), np.int32(W), np.int32(size),
              np.float32(alpha / size), np.float32(beta), np.float32(k))
    return y, scale


def local_response_norm_backward_device(dev, dy, x, y, scale, size, alpha, beta, k):
    # k is already folded into scale.
    N, C, H, W = x.shape
    dx = dev.empty(x.shape, np.float32)
    launch_1d(dev, "lrn_backward", x.size, dy, x, y, scale, dx,
              np.int32(N), np.int32(C), np.int32(H), np.int32(W), np.int32(size),
              np.float32(beta), np.float32(2.0 * alpha * beta / size))
    return dx
