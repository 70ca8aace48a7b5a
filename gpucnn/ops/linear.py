"""Fully connected layer: y = x @ w.T + b (w is (out_features, in_features)), optionally with
a fused ReLU (the entry points ``B.linear``/``B.linear_backward`` and their plans are at the
end). The device path is the SGEMM of :mod:`.gemm` (``kernels/sgemm.cu``) plus
``bias_grad_rows`` (``kernels/conv_reduce.cu``); tests: ``tests/ops/test_linear.py``.

Under precision bf16 the device backends also take x and dy as bf16 bits (uint16,
gpucnn/ops/storage.py) and return y and dx so (w, b, dw, db stay float32): the GEMMs of
:data:`gpucnn.ops.gemm.BF16_GEMMS` and ``bias_grad_rows_bf16io``
(tests/ops/test_linear_bf16io.py). The reference backend's definitions take them too and
round y and dx once (:func:`~gpucnn.ops.dispatch.bf16_activations`). The activations' dtype
is the last element of the ops' setups."""
from __future__ import annotations

import numpy as np

from .dispatch import Op, api, bf16_activations, grads_into, plain, rounded, with_ctx
from .gemm import plan_gemm
from .launch import i32, plan_1d
from .storage import FLOAT32, common_dtype, io_kernel, is_bf16

__all__ = ["linear_reference", "linear_backward_reference", "linear_cpu",
           "linear_backward_cpu", "linear_device", "linear_backward_device", "LINEAR",
           "LINEAR_BACKWARD", "linear_plan", "linear_backward_plan"]

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


def linear_device(ctx, dims, has_bias, relu, dtype):
    # y (B x out) = x (B x in) @ w^T (in x out) + b (one per column); x and y of `dtype`
    n, fin, fout = dims
    fwd, empty = plan_gemm(ctx, n, fout, fin, trans_b=True, has_bias=has_bias, bias_axis=1,
                           relu=relu, dtypes=(dtype, FLOAT32, dtype)), ctx.empty

    def run(x, w, b):
        y = empty((n, fout), dtype)
        fwd.fire(fwd.args(x, w, y, b))
        return y
    return run


def linear_backward_device(ctx, dims, dtype):
    n, fin, fout = dims
    # dx = dy (B x out) @ w (out x in); dw = dy^T (out x B) @ x (B x in)
    data = plan_gemm(ctx, n, fin, fout, dtypes=(dtype, FLOAT32, dtype))
    weights = plan_gemm(ctx, fout, fin, n, trans_a=True, dtypes=(dtype, dtype, FLOAT32))
    bias = plan_1d(ctx, io_kernel("bias_grad_rows", dtype), fout)
    rows, cols, empty = i32(n, "rows"), i32(fout, "cols"), ctx.empty

    def run(dy, x, w, dw=None, db=None):
        dx = empty((n, fin), dtype)
        dw = empty((fout, fin), np.float32) if dw is None else dw
        db = empty((fout,), np.float32) if db is None else db
        data.fire(data.args(dy, w, dx))
        weights.fire(weights.args(dy, x, dw))
        bias.fire((dy, db, rows, cols))
        return dx, dw, db
    return run


# setups: (dims, has_bias, relu, the activations' dtype) and (dims, the activations' dtype)
LINEAR = Op("linear",
            bf16_activations(rounded(lambda ctx, dims, has_bias, relu, dtype: (
                lambda x, w, b: linear_reference(x, w, b, relu)), 2)),
            lambda rt, dims, has_bias, relu, dtype: lambda x, w, b: linear_cpu(rt, x, w, b, relu),
            linear_device)
LINEAR_BACKWARD = Op("linear_backward",
                     grads_into(bf16_activations(rounded(plain(linear_backward_reference, False),
                                                         3, (0,)))),
                     grads_into(with_ctx(linear_backward_cpu, False)), linear_backward_device)


def _weight_dtype(x):
    """What w and b are checked against: float32 beside bf16 activations, else any float."""
    return FLOAT32 if is_bf16(x) else "float"


def linear_plan(backend, x, w, b=None, relu=False):
    backend.check(x, "x", 2, dtype="activation")
    dtype = common_dtype("linear", x=x)
    backend.check(w, "w", 2, dtype=_weight_dtype(x))
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"linear: x has {x.shape[1]} features but w expects in_features="
                         f"{w.shape[1]} (w.shape={tuple(w.shape)})")
    if b is not None:
        backend.check(b, "b", 1, shape=(w.shape[0],), dtype=_weight_dtype(x))
    dims, wt = (x.shape[0], x.shape[1], w.shape[0]), (w.dtype,)
    return backend.plan(LINEAR, (dims, b is not None, bool(relu), dtype),
                        ("x", x.shape, (x.dtype,)), ("w", w.shape, wt),
                        ("b", (w.shape[0],), wt) if b is not None else None)


def linear_backward_plan(backend, dy, x, w):
    """The run takes (dy, x, w, dw_out, db_out): where the weight and bias gradients go
    (None: new arrays), e.g. views of a model's flat gradient buffer. dy and x are both float
    or both bf16 bits (then dx is too; dw and db stay float32)."""
    backend.check(x, "x", 2, dtype="activation")
    backend.check(w, "w", 2, dtype=_weight_dtype(x))
    backend.check(dy, "dy", 2, shape=(x.shape[0], w.shape[0]), dtype="activation")
    dtype = common_dtype("linear", x=x, dy=dy)
    dims, dt, wt = (x.shape[0], x.shape[1], w.shape[0]), (x.dtype,), (w.dtype,)
    return backend.plan(LINEAR_BACKWARD, (dims, dtype), ("dy", dy.shape, (dy.dtype,)),
                        ("x", x.shape, dt), ("w", w.shape, wt), ("dw_out", w.shape, wt, True),
                        ("db_out", (w.shape[0],), wt, True))


@api
def linear(backend, x, w, b=None, relu=False):
    """y = x @ w.T + b, optionally with a fused ReLU; w is (out_features, in_features)."""
    return linear_plan(backend, x, w, b, relu).run(x, w, b)


@api
def linear_backward(backend, dy, x, w):
    return linear_backward_plan(backend, dy, x, w).run(dy, x, w, None, None)
