"""The CUDA emulator: run our unmodified ``.cu`` kernels on the CPU.

Each ``.cu`` file is compiled by g++ against :file:`cuda_emu.h` (force-included, ``-nostdinc``:
like NVRTC, no host header is reachable, so e.g. ``INFINITY`` does not exist), linked with the
runtime (:file:`emu_runtime.cpp`: fibers, block scheduler, barriers, warp ops, fault recovery)
into a shared library, cached under ``$GPUCNN_CACHE_DIR`` (default ``~/.cache/gpucnn/emu``) and
loaded with ctypes. Every cached file is checked before use and rebuilt when damaged
(:mod:`.cache`). The parts: :mod:`.build` (compile, link, cache), :mod:`.runtime` (the loaded
library and what Python and the runtime share, checked at load), :mod:`.kernel` (a launch's
arguments), :mod:`.faults` (the errors and what they report).

    mod = EmuModule(sources, order="forward", checks=False, seed=0, watchdog_s=20.0)
    f = mod.get_function("vec_add")
    f(grid, block, (x, y, out, np.int32(n)), shared_mem=0)

``sources``: list of ``.cu`` paths, or of source texts (a string containing a newline).
Arrays are NumPy arrays used in place as device memory; scalars must be NumPy scalars of the
parameter's exact type (see :mod:`gpucnn.toolchain.launch_args`).

``order``: how threads of a block run between barriers: "forward" (0..n-1), "reverse",
"random" (seeded shuffle per phase). ``checks``: guarded copies of the array arguments (an
out-of-bounds access faults and raises :class:`EmuMemoryError`), NaN-poisoned shared memory,
``poison_outputs`` for :class:`DeviceBackend`. Barrier deadlocks raise
:class:`EmuDeadlockError`, a launch running longer than ``watchdog_s`` :class:`EmuTimeoutError`.
"""
from __future__ import annotations

import os
import platform
import threading
from pathlib import Path

from . import cache
from ..graph import Capturing
from .build import build_library, compiler_version
from .cache import cache_dir
from .faults import (EmuArithmeticError, EmuBuildError, EmuDeadlockError, EmuError,
                     EmuLaunchError, EmuMemoryError, EmuTimeoutError)
from .kernel import EmuKernel
from .runtime import ORDERS
# Still importable from here, as before the package was split into modules:
from .build import (COMMON_FLAGS, CXX, HEADER, KERNEL_FLAGS, LINK_FLAGS,  # noqa: F401
                    RUNTIME, RUNTIME_FLAGS)
from .faults import mmap_page  # noqa: F401
from .runtime import ABI, DYN_SMEM_MAX  # noqa: F401

__all__ = ["EmuModule", "EmuKernel", "emulator_info", "EmuError", "EmuBuildError",
           "EmuMemoryError", "EmuDeadlockError", "EmuTimeoutError", "EmuLaunchError",
           "EmuArithmeticError", "cache_dir", "ORDERS"]

_lock = threading.Lock()  # one build at a time: modules share cached objects


def emulator_info() -> str:
    """One line for ``gpucnn info``: compiler, cache, model. Builds nothing."""
    try:
        cver = compiler_version().splitlines()[0]
    except EmuError as e:
        cver = f"no compiler ({e})"
    cdir = cache.configured_dir()
    return (f"g++ fibers (one per CUDA thread, 64 KiB stacks), up to "
            f"{os.environ.get('GPUCNN_EMU_WORKERS', '2')} worker threads; compiler: {cver}; "
            f"cache: {cdir}")


class EmuModule(Capturing):
    """The emulator's counterpart of ``cupy.RawModule``; it records graphs too
    (:class:`gpucnn.backends.graph.Capturing`)."""

    def __init__(self, sources, order="forward", checks=False, seed=0, watchdog_s=None,
                 workers=None):
        if watchdog_s is None:
            watchdog_s = float(os.environ.get("GPUCNN_EMU_WATCHDOG_S", "20"))
        if platform.machine() not in ("x86_64", "AMD64"):
            raise EmuError(f"the CUDA emulator needs an x86-64 CPU (its fiber switch is x86-64 "
                           f"assembly); this is {platform.machine()}")
        if isinstance(sources, (str, Path)):
            sources = [sources]
        if order not in ORDERS:
            raise ValueError(f"order must be one of {sorted(ORDERS)}, got {order!r}")
        self.sources = list(sources)
        self.order = order
        self.checks = bool(checks)
        self.poison_outputs = self.checks
        self.seed = int(seed) & (2**64 - 1)
        self.watchdog_s = float(watchdog_s)
        self.workers = int(workers if workers is not None
                           else os.environ.get("GPUCNN_EMU_WORKERS", "2"))
        with _lock:
            self.library = build_library(self.sources)
        self._functions = {}

    @property
    def kernel_names(self):
        return sorted(self.library.kernels)

    def get_function(self, name):
        f = self._functions.get(name)
        if f is None:
            if name not in self.library.kernels:
                raise AttributeError(f"emu: no kernel named {name!r} in {self.sources} "
                                     f"(kernels: {', '.join(self.kernel_names)})")
            params, src, bounds = self.library.kernels[name]
            f = self._functions[name] = EmuKernel(self, name, params, src, bounds)
        return f
