"""The device backend: the functional API implemented by launching our CUDA C kernels.

One class serves both ``cuda`` (CuPy arrays, ``cupy.RawModule``) and ``emu`` (NumPy arrays, the
same ``.cu`` files compiled for the CPU by :mod:`gpucnn.backends.emu`). The two differ only in
``module`` — an object whose ``get_function(name)`` returns a callable
``f(grid, block, args, shared_mem=0)`` — in the array module ``xp`` and in ``max_blocks``.
Each op's launches (and their geometry) live in its module under :mod:`gpucnn.ops`; every
method below is one line naming it, so the emulator executes exactly the launch a GPU gets.
"""
from __future__ import annotations

import contextlib
import functools
import os

import numpy as np

from ..cpu import default_workspace_bytes
from ..ops import activation, gemm, linear, loss, lrn, optim
from ..ops.conv import algos as conv_algos
from ..ops.pool import device as pool
from ..toolchain import kernel_sources
from .base import Backend

__all__ = ["DeviceBackend", "make_emu_backend"]


class DeviceBackend(Backend):
    use_cublas = False  # the cuda backend sets it (GPUCNN_CUBLAS=1): GEMMs by cuBLAS
    conv_kind = "device"  # its convolution algorithms (gpucnn/ops/conv/algos.py)

    @property
    def conv_policy(self):
        """How ``auto`` picks a convolution algorithm: timed per layer shape on a GPU, by the
        documented heuristic on the emulator (whose timings say nothing about a GPU)."""
        return "timed" if self.name == "cuda" else "heuristic"

    def __init__(self, module, xp, name, max_blocks, device_name="", workspace_bytes=None,
                 device_id=None):
        self.module = module
        self.xp = xp
        self.name = name
        self.max_blocks = int(max_blocks)
        self.device_name = device_name
        self.device_id = device_id  # the GPU (cuda); None on emu
        self.workspace_bytes = (default_workspace_bytes() if workspace_bytes is None
                                else int(workspace_bytes))

    def describe(self):
        return f"{self.name} ({self.device_name})" if self.device_name else self.name

    def on_device(self):
        """A context that makes this backend's GPU current. CuPy's current device is per
        thread, so every allocation, launch and synchronise of the backend runs inside one
        (see _pin_to_device), whichever thread calls: the ground for one process per GPU."""
        if self.device_id is None:
            return contextlib.nullcontext()
        return self.xp.cuda.Device(self.device_id)  # a fresh one: its stack is per object

    def kernel(self, name):
        return self.module.get_function(name)

    def asarray(self, a, dtype=None):
        a = np.asarray(a) if not isinstance(a, self.xp.ndarray) else a
        if dtype is None:
            dtype = np.int32 if np.issubdtype(a.dtype, np.integer) else np.float32
        return self.xp.ascontiguousarray(self.xp.asarray(a, dtype=dtype))

    def to_numpy(self, a):
        if self.xp is np:
            return np.array(a, copy=True)
        return self.xp.asnumpy(a)

    def empty(self, shape, dtype=np.float32):
        """An output buffer. On ``emu`` with checks on, it is poisoned with NaN (float) or
        a sentinel (int) so a kernel that skips an element cannot pass a test."""
        out = self.xp.empty(shape, dtype=dtype)
        if getattr(self.module, "poison_outputs", False):
            out.fill(np.nan if np.issubdtype(np.dtype(dtype), np.floating) else -7777)
        return out

    def workspace(self, attr, count):
        """A float32 buffer of at least ``count`` elements, kept on the backend as ``attr``
        and reused (grown, never shrunk, when a layer needs more)."""
        buf = getattr(self, attr, None)
        if buf is None or buf.size < count:
            setattr(self, attr, None)  # free the old one before allocating
            buf = self.empty((int(count),), np.float32)
            setattr(self, attr, buf)
        return buf[:count]

    def synchronize(self):
        if self.device_id is not None:
            self.xp.cuda.Device(self.device_id).synchronize()

    def raise_device_errors(self):
        """Raise what the kernels flagged since the last call (out-of-range labels)."""
        loss.raise_label_error_device(self)

    def gemm(self, a, b, trans_a=False, trans_b=False, bias=None, bias_axis=1, relu=False,
             out=None, beta=0.0):
        """C = op(a) @ op(b) (+ bias) (+ beta * out) (ReLU); see :func:`gpucnn.ops.gemm.gemm`."""
        return gemm.gemm(self, a, b, trans_a, trans_b, bias, bias_axis, relu, out, beta)

    # ---- the ops: one line each, naming the op module that launches the kernels ----------
    def _conv2d(self, x, w, b, g, relu, algo):
        return conv_algos.get("device", algo).forward(self, x, w, b, g, relu)

    def _conv2d_backward(self, dy, x, w, g, need_dx, need_dw, algo):
        return conv_algos.get("device", algo).backward(self, dy, x, w, g, need_dx, need_dw)

    def _max_pool2d(self, x, g):
        return pool.max_pool2d(self, x, g)

    def _max_pool2d_backward(self, dy, switches, g):
        return pool.max_pool2d_backward(self, dy, switches, g)

    def _avg_pool2d(self, x, g):
        return pool.avg_pool2d(self, x, g)

    def _avg_pool2d_backward(self, dy, g):
        return pool.avg_pool2d_backward(self, dy, g)

    def _lp_pool2d(self, x, p, g):
        return pool.lp_pool2d(self, x, p, g)

    def _lp_pool2d_backward(self, dy, x, y, p, g):
        return pool.lp_pool2d_backward(self, dy, x, y, p, g)

    def _relu(self, x):
        return activation.relu_device(self, x)

    def _relu_backward(self, dy, y):
        return activation.relu_backward_device(self, dy, y)

    def _linear(self, x, w, b, relu):
        return linear.linear_device(self, x, w, b, relu)

    def _linear_backward(self, dy, x, w):
        return linear.linear_backward_device(self, dy, x, w)

    def _softmax_cross_entropy(self, logits, labels):
        return loss.softmax_cross_entropy_device(self, logits, labels)

    def _softmax_cross_entropy_backward(self, probs, labels):
        return loss.softmax_cross_entropy_backward_device(self, probs, labels)

    def _local_response_norm(self, x, size, alpha, beta, k):
        return lrn.local_response_norm_device(self, x, size, alpha, beta, k)

    def _local_response_norm_backward(self, dy, x, y, scale, size, alpha, beta, k):
        return lrn.local_response_norm_backward_device(self, dy, x, y, scale, size, alpha,
                                                       beta, k)

    def _dropout(self, x, p, seed):
        return activation.dropout_device(self, x, p, seed)

    def _dropout_backward(self, dy, mask):
        return activation.dropout_backward_device(self, dy, mask)

    def _sgd_update(self, param, grad, velocity, lr, momentum, weight_decay, nesterov):
        optim.sgd_update_device(self, param, grad, velocity, lr, momentum, weight_decay,
                                nesterov)

    def _adam_update(self, param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
        optim.adam_update_device(self, param, grad, m, v, lr, beta1, beta2, eps, weight_decay,
                                 step)


def _pin_to_device(cls):
    """Wrap every array and op method the class defines so it runs with the backend's GPU
    current (the public API in base.py validates, then calls these)."""
    for attr, fn in list(vars(cls).items()):
        if not callable(fn) or attr.startswith("__") or attr in ("on_device", "describe",
                                                                  "kernel"):
            continue

        def pinned(self, *args, _fn=fn, **kwargs):
            with self.on_device():
                return _fn(self, *args, **kwargs)

        setattr(cls, attr, functools.wraps(fn)(pinned))
    return cls


_pin_to_device(DeviceBackend)


def make_emu_backend(**emu_options):
    """The ``emu`` backend; options (order, checks, ...) go to :class:`EmuModule`."""
    from .emu import EmuModule  # compiles with g++ on first use: only when asked for
    module = EmuModule(kernel_sources(), **emu_options)
    return DeviceBackend(module, np, "emu", max_blocks=int(os.environ.get(
        "GPUCNN_EMU_MAX_BLOCKS", "8")), device_name="CUDA emulator on the CPU")
