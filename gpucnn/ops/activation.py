"""ReLU and dropout (``kernels/activation.cu``; tests: ``tests/ops/test_activation.py``).

Each op has a plain ``*_reference`` (the oracle), a tuned CPU path where one exists, and a
``*_device`` launch. ReLU backward takes the ReLU's *output* y (so fused conv/linear + ReLU
need no extra tensor): dx = dy where y > 0, else +0.

Dropout's mask comes from a counter-based hash of (seed, flat element index), computed
identically here and in the kernel, so every backend draws the same mask for a seed.
"""
from __future__ import annotations

import numpy as np

from ..cpu import MIN_SPLIT
from .launch import launch_1d

__all__ = ["relu_reference", "relu_backward_reference", "relu_backward_cpu", "relu_device",
           "relu_backward_device", "dropout_hash", "dropout_threshold", "dropout_reference",
           "dropout_backward_reference", "dropout_device", "dropout_backward_device"]

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


def relu_device(dev, x):
    y = dev.empty(x.shape, np.float32)
    launch_1d(dev, "relu_forward", x.size, x, y, np.int32(x.size))
    return y


def relu_backward_device(dev, dy, y):
    dx = dev.empty(y.shape, np.float32)
    launch_1d(dev, "relu_backward", y.size, dy, y, dx, np.int32(y.size))
    return dx


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


def dropout_device(dev, x, p, seed):
    y = dev.empty(x.shape, np.float32)
    mask = dev.empty(x.shape, np.float32)
    keep_scale = np.float32(1.0 / (1.0 - p))
    launch_1d(dev, "dropout_forward", x.size, x, y, mask, np.int32(x.size),
              np.uint32(seed), np.uint32(dropout_threshold(p)), keep_scale)
    return y, mask


def dropout_backward_device(dev, dy, mask):
    dx = dev.empty(mask.shape, np.float32)
    launch_1d(dev, "dropout_backward", mask.size, dy, mask, dx, np.int32(mask.size))
    return dx
