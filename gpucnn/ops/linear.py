"""Fully connected layer: y = x @ w.T + b (w is (out_features, in_features)), optionally with
a fused ReLU. The device path is the SGEMM of :mod:`.gemm` (``kernels/sgemm.cu``) plus
``bias_grad_rows`` (``kernels/conv_reduce.cu``); tests: ``tests/ops/test_linear.py``."""
from __future__ import annotations

import numpy as np

from .gemm import gemm
from .launch import i32, launch_1d

__all__ = ["linear_reference", "linear_backward_reference", "linear_cpu",
           "linear_backward_cpu", "linear_device", "linear_backward_device"]

# Linear layers split the batch over our threads from this many multiply-adds (n * in * out);
# below it one GEMM on one thread (LeNet's 128x400x120: the split costs more than it saves).
# Never on OpenBLAS's own threads (rt.run holds it to one): they made the small GEMMs faster,
# but its idle workers then spin for a while on the cores our next parallel op needs
# (LeNet-5's training step: 19-22 ms that way, 11-16 ms without; 2 Zen 4 vCPUs).
_LINEAR_SPLIT = 50_000_000


def linear_reference(x, w, b, relu):
    y = x @ w.T.astype(x.dtype)
    if b is not None:
        y = y + b
    return np.maximum(y, 0) if relu else y


def linear_backward_reference(dy, x, w):
    """(dx, dw, db)."""
    return dy @ w, dy.T @ x, dy.sum(axis=0)


def _rows(rt, n, big):
    return rt.ranges(n, 8) if big else [(0, n)]


def linear_cpu(rt, x, w, b, relu):
    if w.dtype != x.dtype:
        raise TypeError(f"linear: w dtype {w.dtype} differs from x dtype {x.dtype}")
    y = np.empty((x.shape[0], w.shape[0]), dtype=x.dtype)
    wT = w.T

    def work(a, b_):
        out = y[a:b_]
        np.matmul(x[a:b_], wT, out=out)
        if b is not None:
            out += b
        if relu:
            np.maximum(out, 0, out=out)

    rt.run(work, _rows(rt, x.shape[0], x.shape[0] * w.size >= _LINEAR_SPLIT))
    return y


def linear_backward_cpu(rt, dy, x, w):
    n = x.shape[0]
    dx = np.empty(x.shape, dtype=x.dtype)
    dw = np.empty(w.shape, dtype=x.dtype)

    def work_dx(a, b):
        np.matmul(dy[a:b], w, out=dx[a:b])

    def work_dw(a, b):  # rows of dw = output features
        np.matmul(dy[:, a:b].T, x, out=dw[a:b])

    big = n * w.size >= _LINEAR_SPLIT
    rt.run(work_dx, _rows(rt, n, big))
    rt.run(work_dw, _rows(rt, w.shape[0], big))
    return dx, dw, dy.sum(axis=0)


def linear_device(dev, x, w, b, relu):
    # y (B x out) = x (B x in) @ w^T (in x out) + b (one per column)
    return gemm(dev, x, w, trans_b=True, bias=b, bias_axis=1, relu=relu)


def linear_backward_device(dev, dy, x, w):
    dx = gemm(dev, dy, w)                  # (B x out) @ (out x in)
    dw = gemm(dev, dy, x, trans_a=True)    # (out x B) @ (B x in)
    rows, cols = dy.shape
    db = dev.empty((cols,), np.float32)
    launch_1d(dev, "bias_grad_rows", cols, dy, db, i32(rows, "rows"), i32(cols, "cols"))
    return dx, dw, db
