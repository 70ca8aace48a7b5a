"""The device backend: the functional API implemented by launching our CUDA C kernels.

One class serves both ``cuda`` (CuPy arrays, ``cupy.RawModule``) and ``emu`` (NumPy arrays, the
same ``.cu`` files compiled for the CPU by :mod:`gpucnn.backends.emu`). The two differ only in
``module`` — an object whose ``get_function(name)`` returns a callable
``f(grid, block, args, shared_mem=0)`` — in the array module ``xp`` and in ``max_blocks``.
Launch geometry is computed once, here and in :mod:`.launch`, for both.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np

from .base import Backend
from .device_conv import ConvKernels
from .device_misc import MiscKernels

__all__ = ["DeviceBackend", "kernel_dir", "kernel_sources", "make_emu_backend"]


def kernel_dir() -> Path:
    """Where the .cu files are: the installed ``gpucnn.kernels`` package, else the checkout."""
    try:
        d = Path(str(resources.files("gpucnn.kernels")))
        if any(d.glob("*.cu")):
            return d
    except (ModuleNotFoundError, TypeError):
        pass
    d = Path(__file__).resolve().parents[2] / "kernels"
    if any(d.glob("*.cu")):
        return d
    raise FileNotFoundError("gpucnn's CUDA sources (kernels/*.cu) were not found: the package "
                            "install is incomplete (expected package data gpucnn/kernels/*.cu)")


def kernel_sources():
    """Sorted paths of every kernel source file."""
    return sorted(kernel_dir().glob("*.cu"))


class DeviceBackend(ConvKernels, MiscKernels, Backend):
    def __init__(self, module, xp, name, max_blocks, device_name="", workspace_bytes=None):
        self.module = module
        self.xp = xp
        self.name = name
        self.max_blocks = int(max_blocks)
        self.device_name = device_name
        if workspace_bytes is None:
            workspace_bytes = int(float(os.environ.get("GPUCNN_WORKSPACE_MB", "256")) * 2**20)
        self.workspace_bytes = int(workspace_bytes)

    def describe(self):
        return f"{self.name} ({self.device_name})" if self.device_name else self.name

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

    def synchronize(self):
        if self.xp is not np:
            self.xp.cuda.Device().synchronize()


def make_emu_backend(**emu_options):
    """The ``emu`` backend; options (order, checks, ...) go to :class:`EmuModule`."""
    from .emu import EmuModule
    module = EmuModule(kernel_sources(), **emu_options)
    return DeviceBackend(module, np, "emu", max_blocks=int(os.environ.get(
        "GPUCNN_EMU_MAX_BLOCKS", "8")), device_name="CUDA emulator on the CPU")
