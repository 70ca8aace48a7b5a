"""A launchable emulated kernel: its arguments checked and marshalled for the runtime on every
call (guarded copies of the arrays when checks are on), the launch's outcome turned into an
exception (:mod:`.faults`)."""
from __future__ import annotations

import ctypes

import numpy as np

from ...toolchain import check_launch_args
from .faults import EmuErr, EmuLaunchError, check_canaries, launch_error
from .runtime import CHECKS_DYN_SMEM, CHECKS_ON, DYN_SMEM_MAX, ORDERS

__all__ = ["EmuKernel"]


def _as_dim3(v, what):
    if isinstance(v, (int, np.integer)):
        t = (int(v), 1, 1)
    else:
        t = tuple(int(x) for x in v)
        if not 1 <= len(t) <= 3:
            raise ValueError(f"{what} must be an int or a tuple of 1..3 ints, got {v!r}")
        t = t + (1,) * (3 - len(t))
    if any(x < 1 for x in t):
        raise ValueError(f"{what} must be positive, got {v!r}")
    return t


_SCALAR_CTYPES = {
    np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double,
    np.dtype(np.int32): ctypes.c_int32, np.dtype(np.uint32): ctypes.c_uint32,
    np.dtype(np.int64): ctypes.c_int64, np.dtype(np.uint64): ctypes.c_uint64,
    np.dtype(np.int16): ctypes.c_int16, np.dtype(np.uint16): ctypes.c_uint16,
    np.dtype(np.int8): ctypes.c_int8, np.dtype(np.uint8): ctypes.c_uint8,
    np.dtype(np.bool_): ctypes.c_bool,
}


class EmuKernel:
    """A launchable kernel: ``k(grid, block, args, shared_mem=0)``."""

    def __init__(self, module, name, params, source, max_threads=None):
        self.module = module
        self.max_threads = max_threads    # from __launch_bounds__, if any
        self.name = name
        self.params = params
        self.source = source
        self._tramp = module.library.tramps[name]
        self.last_cpu_s = 0.0   # CPU seconds the emulator's workers spent in the last launch
        # Guarded copies normally end exactly at a guard page (their start may then be only
        # 4-byte aligned). A kernel whose source uses 16-byte vector types gets 16-byte aligned
        # copies instead, one using WMMA 32-byte aligned ones (build.copy_alignment; a
        # past-the-end write within the padding is then found by a canary check, a read there
        # sees NaN).
        self.align = module.library.vector_sources.get(str(source), 1)

    def __repr__(self):
        return f"<EmuKernel {self.name} from {self.source}>"

    def __call__(self, grid, block, args, shared_mem=0, **kw):
        recording = self.module.recording
        if recording is not None:  # graph capture: recorded, run by the replays
            recording.add(self, grid, block, args, kw.get("shared_mem", shared_mem))
            return
        self.replay(grid, block, args, shared_mem, **kw)

    def replay(self, grid, block, args, shared_mem=0, **kw):
        """Run the launch now (checked and marshalled as every call is)."""
        mod = self.module
        if kw:
            # accept cupy's keyword spelling too
            shared_mem = kw.pop("shared_mem", shared_mem)
            if kw:
                raise TypeError(f"unexpected keyword arguments {sorted(kw)}")
        vals = check_launch_args(self.name, self.params, args)
        g = _as_dim3(grid, "grid")
        b = _as_dim3(block, "block")
        nthreads = b[0] * b[1] * b[2]
        if self.max_threads is not None and nthreads > self.max_threads:
            raise EmuLaunchError(f"kernel {self.name}: block={b} has {nthreads} threads but the "
                                 f"kernel is declared __launch_bounds__({self.max_threads}); CUDA "
                                 f"refuses this launch")
        shared_mem = int(shared_mem)
        if shared_mem < 0 or shared_mem > DYN_SMEM_MAX:
            raise ValueError(f"kernel {self.name}: shared_mem={shared_mem} outside "
                             f"0..{DYN_SMEM_MAX}")
        built = mod.library
        n = len(vals)
        slots = []            # ctypes objects holding each argument's value
        guards = []           # (param, array, guarded copy, its mapping's base, total, nbytes)
        ranges = []           # (param, array, pointer passed, nbytes)
        by_buffer = {}
        try:
            for p, v in zip(self.params, vals):
                if p.is_pointer:
                    if not isinstance(v, np.ndarray):
                        raise TypeError(f"kernel {self.name}: argument {p.index} ({p.name}): the "
                                        f"emulator needs NumPy arrays, got {type(v).__name__}")
                    addr = v.ctypes.data
                    nbytes = v.nbytes
                    if mod.checks:
                        key = (addr, nbytes)
                        if key in by_buffer:
                            ptr = by_buffer[key]
                        else:
                            base = ctypes.c_void_p()
                            total = ctypes.c_ulonglong()
                            ptr = built.guard_alloc(nbytes, self.align, ctypes.byref(base),
                                                    ctypes.byref(total))
                            if not ptr:
                                raise MemoryError("emu: could not map a guarded buffer")
                            if nbytes:
                                ctypes.memmove(ptr, addr, nbytes)
                            guards.append((p, v, ptr, base.value, total.value, nbytes))
                            by_buffer[key] = ptr
                        ranges.append((p, v, ptr, nbytes))
                        slots.append(ctypes.c_void_p(ptr))
                    else:
                        ranges.append((p, v, addr, nbytes))
                        slots.append(ctypes.c_void_p(addr))
                else:
                    slots.append(_SCALAR_CTYPES[p.dtype](v.item()))
            argv = (ctypes.c_void_p * max(n, 1))(*[ctypes.addressof(s) for s in slots])
            g3 = (ctypes.c_uint * 3)(*g)
            b3 = (ctypes.c_uint * 3)(*b)
            err = EmuErr()
            checks = (CHECKS_ON | (CHECKS_DYN_SMEM if built.has_dyn else 0)) if mod.checks else 0
            rc = built.launch(self._tramp, argv, g3, b3, shared_mem, ORDERS[mod.order], mod.seed,
                              checks, float(mod.watchdog_s),
                              built.poison.ctypes.data if built.npoison else None,
                              built.npoison, mod.workers, ctypes.byref(err))
            self.last_cpu_s = built.cpu_ns() * 1e-9
            if rc == 0 and mod.checks:
                for p, v, ptr, base, total, nbytes in guards:
                    check_canaries(self.name, p, v, ptr, base, total, nbytes, g, b)
                for p, v, ptr, base, total, nbytes in guards:
                    if nbytes and v.flags.writeable:
                        ctypes.memmove(v.ctypes.data, ptr, nbytes)
            if rc != 0:
                raise launch_error(self.name, rc, err, g, b, ranges, shared_mem, mod.checks,
                                   mod.watchdog_s)
        finally:
            for p, v, ptr, base, total, nbytes in guards:
                built.guard_free(base, total)
