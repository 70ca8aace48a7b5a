"""The Python side of emu_runtime.cpp: what the runtime is built with, and a loaded module
library (:class:`Library`) with the runtime's entry points.

Python owns the numbers both sides use: the CUDA limits the runtime enforces (from
:mod:`gpucnn.toolchain.limits`, their one definition) and the ABI go to the compiler as
``-D`` (:data:`DEFINES`, part of the runtime's cache key). What only C can state (EmuErr's
layout) or only C uses by name (the error, order and check codes) is reported by the library's
facts table, ``gpucnn_emu_facts()``, and compared when a library is loaded: a mismatch is an
:class:`EmuBuildError` naming each differing fact.
"""
from __future__ import annotations

import ctypes
import os

import numpy as np

from ...cpu import native
from ...toolchain.limits import (BLOCK_DIM_MAX, GRID_DIM_MAX, MAX_THREADS_PER_BLOCK,
                                 SMEM_PER_BLOCK_DEFAULT)
from .faults import EmuBuildError, EmuErr, Kind

__all__ = ["ABI", "DYN_SMEM_MAX", "DEFINES", "ORDERS", "CHECKS_ON", "CHECKS_DYN_SMEM",
           "expected_facts", "Library"]

# The version of the launch interface and of what build.py generates (trampolines, the
# shared-memory assembly); part of every cache key, so bumping it rebuilds everything.
ABI = 2
DYN_SMEM_MAX = SMEM_PER_BLOCK_DEFAULT
DEFINES = {"GPUCNN_EMU_ABI": ABI, "GPUCNN_EMU_DYN_SMEM_MAX": DYN_SMEM_MAX,
           "GPUCNN_EMU_MAX_THREADS": MAX_THREADS_PER_BLOCK,
           **{f"GPUCNN_EMU_GRID_{a}_MAX": n for a, n in zip("XYZ", GRID_DIM_MAX)},
           **{f"GPUCNN_EMU_BLOCK_{a}_MAX": n for a, n in zip("XYZ", BLOCK_DIM_MAX)}}
ORDERS = {"forward": 0, "reverse": 1, "random": 2}
CHECKS_ON, CHECKS_DYN_SMEM = 1, 2  # a launch's checks bits


def expected_facts() -> dict:
    """The facts table a module library must report."""
    return {**DEFINES, **{f"ERR_{k.name}": k.value for k in Kind},
            **{f"ORDER_{name.upper()}": v for name, v in ORDERS.items()},
            "CHECKS_ON": CHECKS_ON, "CHECKS_DYN_SMEM": CHECKS_DYN_SMEM,
            **native.layout({"EmuErr": EmuErr})}


def _entry(lib, name, restype, argtypes):
    f = lib[name]
    f.restype = restype
    f.argtypes = argtypes
    return f


class Library:
    """A loaded module library plus what the build learned about it: ``kernels`` (name ->
    (params, source, launch bound)), ``poison`` ((offset, size) of each static __shared__
    variable, filled with NaN before each block when checks are on), ``has_dyn`` (some
    kernel uses extern __shared__), ``tramps`` (name -> the kernel's trampoline address)."""

    def __init__(self, path, kernels: dict, poison, has_dyn, vector_sources):
        self.path = path
        self.kernels = kernels
        self.has_dyn = has_dyn
        self.vector_sources = vector_sources  # str(source) -> its copies' alignment (build.py)
        self.poison = np.ascontiguousarray(np.array(poison, dtype=np.int64).reshape(-1))
        self.npoison = len(poison)
        try:
            self._load()
        except (OSError, AttributeError) as e:  # dlopen failed, or a symbol is missing
            raise EmuBuildError(f"emu: cannot load the module {path}: {e}") from None

    def _load(self):
        P, U64 = ctypes.c_void_p, ctypes.c_ulonglong
        self.lib = ctypes.CDLL(str(self.path), mode=os.RTLD_LOCAL)
        self.tramps = {name: ctypes.cast(self.lib["__emu_k_" + name], P).value
                       for name in self.kernels}
        self.launch = _entry(self.lib, "gpucnn_emu_launch", ctypes.c_int,
                             [P, P, P, P, U64, ctypes.c_int, U64, ctypes.c_int, ctypes.c_double,
                              P, ctypes.c_int, ctypes.c_int, ctypes.POINTER(EmuErr)])
        self.guard_alloc = _entry(self.lib, "gpucnn_emu_guard_alloc", P,
                                  [U64, U64, ctypes.POINTER(P), ctypes.POINTER(U64)])
        self.guard_free = _entry(self.lib, "gpucnn_emu_guard_free", None, [P, U64])
        self.cpu_ns = _entry(self.lib, "gpucnn_emu_last_cpu_ns", ctypes.c_longlong, [])

    def check_facts(self):
        """EmuBuildError unless the library reports :func:`expected_facts` (a source edited
        on one side only: rebuilding cannot help)."""
        try:
            wrong = native.compare_facts(native.facts(self.lib, "gpucnn_emu_facts"),
                                         expected_facts())
        except native.NativeUnavailable as e:
            wrong = [str(e)]
        if wrong:
            raise EmuBuildError(f"emu: the runtime in {self.path} does not match "
                                f"gpucnn/backends/emu: " + "; ".join(wrong))
