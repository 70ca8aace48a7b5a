"""ReLU and dropout (``kernels/activation.cu``; tests: ``tests/ops/test_activation.py``).

Each op has a plain ``*_reference`` (the oracle), a tuned CPU path where one exists, and a
``*_device`` plan of its launch; the entry points (``B.relu``, ...) and the plan makers
layers keep follow. ReLU backward takes the ReLU's *output* y (so fused conv/linear + ReLU
need no extra tensor): dx = dy where y > 0, else +0.

Dropout's mask comes from a counter-based hash of (seed, flat element index), computed
identically here and in the kernel, so every backend draws the same mask for a seed.

On device backends every op here also takes bf16 activations (uint16 bits,
:mod:`gpucnn.ops.storage`) and returns bf16 ones: the ``_bf16io`` kernels, which compute in
float32 and round once at the store. x, y, dy and dx are then bf16; dropout's mask stays float32
(its keep scale 1 / (1 - p) is generally not a bf16 value). The plan makers take the
activations' dtype as the last item of their setup: ``RELU`` / ``RELU_BACKWARD`` /
``DROPOUT_BACKWARD``: ``(ctx, shape, dtype)``; ``DROPOUT``: ``(ctx, shape, p, dtype)``; the
reference and CPU makers ignore it.
"""
from __future__ import annotations

import math

import numpy as np

from ..cpu import MIN_SPLIT
from .common import hyper
from .dispatch import Op, api, bf16_activations, plain, with_ctx
from .launch import plan_1d
from .storage import io_kernel, is_bf16

__all__ = ["relu_reference", "relu_backward_reference", "relu_backward_cpu", "relu_device",
           "relu_backward_device", "dropout_hash", "dropout_index_shift", "dropout_threshold", "dropout_reference",
           "dropout_backward_reference", "dropout_device", "dropout_backward_device",
           "RELU", "RELU_BACKWARD", "DROPOUT", "DROPOUT_BACKWARD", "relu_plan",
           "relu_backward_plan", "dropout_plan", "dropout_backward_plan", "check_same_dtype"]

_M32 = 0xFFFFFFFF


# ---- ReLU -------------------------------------------------------------------------------------
def relu_reference(x):
    return np.maximum(x, 0)


def relu_backward_reference(dy, y):
    return np.where(y > 0, dy, 0).astype(dy.dtype, copy=False)


def relu_backward_cpu(rt, dy, y):
    """dx = dy where y > 0 else 0, as a bitwise AND with a 0 / all-ones mask: branch-free
    (np.where and masked copies are ~5x slower on random masks) and exact (NaN, -0.0)."""
    if y.dtype != dy.dtype:
        return relu_backward_reference(dy, y)
    it = np.int32 if dy.itemsize == 4 else np.int64
    dx = rt.output(dy.shape, dy.dtype)
    yf, dyf, dxf = y.reshape(-1), dy.reshape(-1).view(it), dx.reshape(-1).view(it)

    def work(a, b):
        pos = rt.scratch("relu_pos", (b - a,), np.bool_)
        mask = rt.scratch("relu_mask", (b - a,), it)
        np.greater(yf[a:b], 0, out=pos)
        np.negative(pos.view(np.int8), out=mask)  # 0 or all ones
        np.bitwise_and(dyf[a:b], mask, out=dxf[a:b])

    rt.run(work, rt.ranges(dy.size, 4096, min_units=max(1, MIN_SPLIT // 4096)))
    return dx


def _map_plan(name):
    """The plan factory ``make(ctx, shape, dtype)`` of grid-stride kernel ``name(inputs...,
    out, n)`` (or its ``_bf16io`` variant, for bf16 activations) writing one array of the
    inputs' shape and the activations' dtype."""
    def make(ctx, shape, dtype):
        n, dtype = math.prod(shape), np.dtype(dtype)
        launch, empty, count = plan_1d(ctx, io_kernel(name, dtype), n), ctx.empty, np.int32(n)

        def run(*inputs):
            out = empty(shape, dtype)
            launch.fire((*inputs, out, count))
            return out
        return run
    return make


relu_device = _map_plan("relu_forward")
relu_backward_device = _map_plan("relu_backward")


# ---- dropout ----------------------------------------------------------------------------------
def dropout_hash(seed, index):
    """32-bit hash of (seed, flat element index); ``index`` is a uint32 NumPy array.

    x = index * 0x9E3779B1 + seed * 0x85EBCA77 (mod 2^32), then the 'lowbias32' finaliser:
    x ^= x >> 16; x *= 0x7FEB352D; x ^= x >> 15; x *= 0x846CA68B; x ^= x >> 16.
    """
    x = index.astype(np.uint32) * np.uint32(0x9E3779B1) + np.uint32(
        (int(seed) * 0x85EBCA77) & _M32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


# The hash mixes index * 0x9E3779B1 + seed * 0x85EBCA77: an index offset o is the seed shifted
# by o * 0x9E3779B1 / 0x85EBCA77 (mod 2^32; the divisor is odd, so invertible). Data-parallel
# ranks draw the masks of their slice of the global batch this way, with the kernels unchanged.
_SEED_MUL_INV = pow(0x85EBCA77, -1, 1 << 32)


def dropout_index_shift(offset):
    """The seed shift that makes dropout_hash(seed + shift, i) == dropout_hash(seed,
    i + offset) for every i (mod 2^32)."""
    return (int(offset) * 0x9E3779B1 * _SEED_MUL_INV) & _M32


def dropout_threshold(p):
    """An element is kept iff (hash >> 8) >= threshold; threshold = round(p * 2^24)."""
    return int(round(float(p) * (1 << 24)))


def dropout_reference(x, p, seed):
    """(y, mask) with mask = 0 or 1/(1-p) (rounded to float32, as the kernel has it)."""
    h = dropout_hash(seed, np.arange(x.size, dtype=np.uint32)).reshape(x.shape)
    keep = (h >> np.uint32(8)) >= np.uint32(dropout_threshold(p))
    mask = (keep * x.dtype.type(np.float32(1.0 / (1.0 - p)))).astype(x.dtype)
    return x * mask, mask


def dropout_backward_reference(dy, mask):
    return dy * mask


def dropout_device(ctx, shape, p, dtype):
    n, dtype = math.prod(shape), np.dtype(dtype)
    launch, empty = plan_1d(ctx, io_kernel("dropout_forward", dtype), n), ctx.empty
    advance = plan_1d(ctx, "dropout_advance", 1)
    count, threshold = np.int32(n), np.uint32(dropout_threshold(p))
    keep_scale = np.float32(1.0 / (1.0 - p))

    def run(x, seed, state):
        y, mask = empty(shape, dtype), empty(shape, np.float32)
        if state is None:  # a single call (B.dropout): its seed as the state, count 0
            launch.fire((x, y, mask, count, ctx.from_host(np.array([seed, 0], np.uint32),
                                                           "dropout"), threshold, keep_scale))
        else:  # a layer's [base seed, calls] on the device: this call's, then the next
            launch.fire((x, y, mask, count, state, threshold, keep_scale))
            advance.fire((state,))
        return y, mask
    return run


dropout_backward_device = _map_plan("dropout_backward")


# ---- the ops and their entry points ------------------------------------------------------
RELU = Op("relu", bf16_activations(plain(relu_reference, False)), device=relu_device)
RELU_BACKWARD = Op("relu_backward", bf16_activations(plain(relu_backward_reference, False)),
                   with_ctx(relu_backward_cpu, False), relu_backward_device)
DROPOUT = Op("dropout", bf16_activations(lambda ctx, shape, p, dtype: (
    lambda x, seed, state: dropout_reference(x, p, seed))), device=dropout_device)
DROPOUT_BACKWARD = Op("dropout_backward", bf16_activations(
    plain(dropout_backward_reference, False)), device=dropout_backward_device)


def check_same_dtype(op, a, a_name, b, b_name):
    """Refuse a call mixing activation dtypes (float32 with bf16 bits, float32 with float64):
    the op runs in one of them, chosen by neither argument alone."""
    if a.dtype != b.dtype:
        raise TypeError(f"{op}: {a_name} ({a.dtype}) and {b_name} ({b.dtype}) must have the "
                        f"same dtype: both float, or both bf16 bits (uint16, device backends)")


def relu_plan(backend, x):
    backend.check(x, "x", dtype="activation")
    return backend.plan(RELU, (x.shape, x.dtype), ("x", x.shape, (x.dtype,)))


def relu_backward_plan(backend, dy, y):
    backend.check(y, "y", dtype="activation")
    backend.check(dy, "dy", shape=y.shape, dtype="activation")
    check_same_dtype("relu_backward", dy, "dy", y, "y")
    dt = (y.dtype,)
    return backend.plan(RELU_BACKWARD, (y.shape, y.dtype), ("dy", y.shape, dt),
                        ("y", y.shape, dt))


def dropout_plan(backend, x, p):
    """The run takes (x, seed, state): seed is taken modulo 2^32; ``state`` (device backends,
    or None) is a uint32[2] [base seed, calls] on the device from which the kernel takes the
    seed, base + 0x9E3779B9 * calls, and which it advances (nn.Dropout's own counter, kept
    on the device so that a captured step draws a new mask every replay)."""
    backend.check(x, "x", dtype="activation")
    p = hyper("dropout", "p", p, 0, 1, high_open=True)
    if x.size >= 2 ** 32:
        raise ValueError("dropout: tensors of 2^32 elements or more are not supported")
    return backend.plan(DROPOUT, (x.shape, p, x.dtype), ("x", x.shape, (x.dtype,)), None,
                        ("state", (2,), (np.dtype(np.uint32),), True))


def dropout_backward_plan(backend, dy, mask):
    """dy float (then the mask has its dtype) or bf16 bits (device backends; the mask is then
    float32, as dropout made it: the only float dtype there)."""
    backend.check(mask, "mask")
    backend.check(dy, "dy", shape=mask.shape, dtype="activation")
    if not is_bf16(dy):
        check_same_dtype("dropout_backward", dy, "dy", mask, "mask")
    return backend.plan(DROPOUT_BACKWARD, (mask.shape, dy.dtype),
                        ("dy", mask.shape, (dy.dtype,)), ("mask", mask.shape, (mask.dtype,)))


@api
def relu(backend, x):
    return relu_plan(backend, x).run(x)


@api
def relu_backward(backend, dy, y):
    """dx = dy where the ReLU's *output* y > 0 (works for fused conv/linear + ReLU too)."""
    return relu_backward_plan(backend, dy, y).run(dy, y)


@api
def dropout(backend, x, p, seed):
    """(y, mask) with mask = 0 or 1/(1-p); element i kept iff hash(seed, i) passes."""
    return dropout_plan(backend, x, p).run(x, int(seed) & _M32, None)


@api
def dropout_backward(backend, dy, mask):
    return dropout_backward_plan(backend, dy, mask).run(dy, mask)
