"""What goes wrong on the emulator: the exception classes, the runtime's error record
(:class:`EmuErr`, filled by ``gpucnn_emu_launch``) and turning it into an exception that names
the kernel, the block and thread, and which argument a faulting address is near."""
from __future__ import annotations

import ctypes
import enum
import os
import signal

__all__ = ["EmuError", "EmuBuildError", "EmuMemoryError", "EmuDeadlockError", "EmuTimeoutError",
           "EmuArithmeticError", "EmuLaunchError", "Kind", "EmuErr", "mmap_page",
           "check_canaries", "launch_error"]


class EmuError(RuntimeError):
    """A kernel failed on the emulator."""


class EmuBuildError(EmuError):
    """g++ rejected a kernel source (message has the compiler output)."""


class EmuMemoryError(EmuError):
    """Invalid memory access (out of bounds of an argument buffer, wild pointer, stack overflow)."""


class EmuDeadlockError(EmuError):
    """Barrier deadlock / divergent barrier / warp operation waiting for lanes that never come."""


class EmuTimeoutError(EmuError):
    """The launch ran longer than watchdog_s (e.g. a hung spin loop)."""


class EmuArithmeticError(EmuError):
    """SIGFPE in a kernel: integer division by zero (silently undefined on a GPU)."""


class EmuLaunchError(EmuError):
    """Invalid launch configuration, __trap(), ..."""


class Kind(enum.IntEnum):
    """emu_runtime.cpp's ``ERR_*`` codes (a launch's return value; checked at load)."""
    FAULT = 1
    DEADLOCK = 2
    WATCHDOG = 3
    TRAP = 4
    LAUNCH = 5
    SMEM = 6


class EmuErr(ctypes.Structure):
    """emu_runtime.cpp's ``EmuErr`` (its layout is checked at load: runtime.py)."""
    _fields_ = [("kind", ctypes.c_int), ("signo", ctypes.c_int),
                ("block", ctypes.c_uint * 3), ("thread", ctypes.c_uint * 3),
                ("addr", ctypes.c_ulonglong), ("msg", ctypes.c_char * 2048)]


_KIND_ERRORS = {Kind.FAULT: EmuMemoryError, Kind.DEADLOCK: EmuDeadlockError,
                Kind.WATCHDOG: EmuTimeoutError, Kind.TRAP: EmuLaunchError,
                Kind.LAUNCH: EmuLaunchError, Kind.SMEM: EmuMemoryError}
_page = None


def mmap_page():
    global _page
    if _page is None:
        _page = os.sysconf("SC_PAGESIZE")
    return _page


def check_canaries(kernel, p, v, ptr, base, total, nbytes, g, b):
    """Raise EmuMemoryError if the launch wrote into the canary bytes around the guarded copy
    of argument ``p`` (``v`` the caller's array; the copy's mapping from base, total bytes):
    writes past the end fault at once, but a write before the start or into the alignment
    padding after the end is only found here."""
    page = mmap_page()
    pad = ptr - base - page
    what = f"argument {p.index} ({p.ctype} {p.name}, {v.size} elements of {v.dtype})"
    if pad > 0:
        raw = ctypes.string_at(base + page, pad)
        if raw != b"\xff" * pad:
            first = next(i for i, c in enumerate(raw) if c != 0xFF)
            raise EmuMemoryError(
                f"kernel {kernel} grid={g} block={b}: out-of-bounds write before the start "
                f"of {what}: byte {pad - first} before element 0 was modified")
    end = ptr + nbytes
    tail = base + total - page - end
    if tail > 0:
        raw = ctypes.string_at(end, tail)
        if raw != b"\xff" * tail:
            first = next(i for i, c in enumerate(raw) if c != 0xFF)
            raise EmuMemoryError(
                f"kernel {kernel} grid={g} block={b}: out-of-bounds write past the end of "
                f"{what}: byte {first} past the end was modified")


def launch_error(kernel, rc, err, g, b, ranges, shared_mem, checks, watchdog_s):
    """The exception for a launch that returned ``rc`` (a Kind) with the record ``err``;
    ``ranges``: (param, array, pointer passed, nbytes) of each pointer argument."""
    msg = err.msg.decode(errors="replace")
    cls = _KIND_ERRORS.get(rc, EmuError)
    where = (f"kernel {kernel} grid={g} block={b} shared_mem={shared_mem}, "
             f"block ({err.block[0]},{err.block[1]},{err.block[2]}) "
             f"thread ({err.thread[0]},{err.thread[1]},{err.thread[2]})")
    if rc == Kind.LAUNCH:
        return EmuLaunchError(f"kernel {kernel}: {msg}")
    if rc == Kind.SMEM:
        return EmuMemoryError(f"kernel {kernel} grid={g} block={b} shared_mem={shared_mem}, "
                              f"block ({err.block[0]},{err.block[1]},{err.block[2]}): {msg}")
    if rc == Kind.WATCHDOG:
        return EmuTimeoutError(f"{where}: watchdog: the launch ran longer than "
                               f"watchdog_s={watchdog_s} s (hung spin loop?); "
                               f"{msg}. The launch was abandoned")
    if rc == Kind.FAULT and err.signo == signal.SIGFPE:
        return EmuArithmeticError(f"{where}: {msg}. The launch was abandoned")
    if rc == Kind.FAULT:
        near = "" if "stack overflow" in msg else _describe_addr(err.addr, ranges, checks)
        return EmuMemoryError(f"{where}: {msg}{near}. The launch was abandoned")
    return cls(f"{where}: {msg}")


def _describe_addr(addr, ranges, checks):
    if not addr:
        return ""
    best = None
    for p, v, ptr, nbytes in ranges:
        item = v.itemsize or 1
        if ptr <= addr < ptr + max(nbytes, 1) and nbytes:
            return (f" -- inside argument {p.index} ({p.ctype} {p.name}) at element "
                    f"{(addr - ptr) // item}")
        if addr >= ptr + nbytes:
            dist = addr - (ptr + nbytes)
            txt = (f" -- {dist} bytes past the end of argument {p.index} ({p.ctype} {p.name}, "
                   f"{v.size} elements of {v.dtype}): element index {(addr - ptr) // item}")
        else:
            dist = ptr - addr
            txt = (f" -- {dist} bytes before the start of argument {p.index} ({p.ctype} {p.name}, "
                   f"{v.size} elements of {v.dtype}): element index -{-((addr - ptr) // item)}")
        if best is None or dist < best[0]:
            best = (dist, txt)
    if best is None or (not checks and best[0] > 1 << 20):
        return "" if best is None else " (not near any argument buffer)"
    if checks and best[0] > 2 * mmap_page():
        return " (not near any argument buffer)"
    return best[1]
