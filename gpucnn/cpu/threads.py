"""Threads for the tuned CPU ops: OpenBLAS thread control and a small persistent worker pool.

Batches are split over ``threads`` Python threads (NumPy and OpenBLAS release the GIL). Inside
such a region OpenBLAS is held to one thread (via its own C API, restored afterwards) so the two
levels of parallelism do not oversubscribe the cores, and NumPy's ufunc buffer is made small
(context-local; strided ufuncs ran ~3x faster, see UFUNC_BUFSIZE).
"""
from __future__ import annotations

import ctypes
import functools
import glob
import os
import _thread
import threading
import weakref
from pathlib import Path

import numpy as np

__all__ = ["ThreadPool", "blas_threads", "set_blas_threads", "openblas_info",
           "default_threads", "split", "MIN_SPLIT", "one_blas_thread"]


def _find_openblas():
    """(get, set, corename, path) for the OpenBLAS NumPy links (the scipy-openblas wheels), or
    None: then thread limiting is skipped."""
    try:
        libdir = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
        for path in sorted(glob.glob(os.path.join(libdir, "*openblas*"))):
            lib = ctypes.CDLL(path)  # already loaded by NumPy: the same handle
            for suffix in ("64_", "", "_"):
                for prefix in ("scipy_openblas", "openblas"):
                    get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                    set_ = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                    if get is not None and set_ is not None:
                        get.restype, get.argtypes = ctypes.c_int, []
                        set_.restype, set_.argtypes = None, [ctypes.c_int]
                        core = getattr(lib, f"{prefix}_get_corename{suffix}", None)
                        if core is not None:
                            core.restype, core.argtypes = ctypes.c_char_p, []
                        return get, set_, core, os.path.realpath(path)
    except OSError:
        pass
    return None


_OPENBLAS = _find_openblas()


def openblas_info():
    """What was found of NumPy's OpenBLAS at run time (for benchmark reports)."""
    if not _OPENBLAS:
        return {"found": False}
    get, _, core, path = _OPENBLAS
    return {"found": True, "path": path, "threads_now": get(),
            "corename": core().decode() if core else None}


def blas_threads():
    """OpenBLAS's current thread count (None when it cannot be queried)."""
    return _OPENBLAS[0]() if _OPENBLAS else None


def set_blas_threads(n):
    """Set OpenBLAS's thread count outside our parallel regions (e.g. each of N processes on
    one machine: its share of the cores); False when it cannot be set."""
    if not _OPENBLAS:
        return False
    with _blas_lock:
        if _blas_depth[0]:
            _blas_depth[1] = int(n)  # restored to this when the region ends
        else:
            _OPENBLAS[1](int(n))
    return True


_blas_lock = threading.Lock()
_blas_depth = [0, None]  # nesting depth, saved thread count


class one_blas_thread:
    """Hold OpenBLAS to one thread while our own threads split the work; restore afterwards.

    The setting is process-wide, so it is taken only around a parallel region (a few
    microseconds) and nested regions (several backends, or threads) share one save/restore."""

    def __enter__(self):
        if _OPENBLAS:
            with _blas_lock:
                if _blas_depth[0] == 0:
                    _blas_depth[1] = _OPENBLAS[0]()
                    if _blas_depth[1] != 1:
                        _OPENBLAS[1](1)
                _blas_depth[0] += 1
        return self

    def __exit__(self, *exc):
        if _OPENBLAS:
            with _blas_lock:
                _blas_depth[0] -= 1
                if _blas_depth[0] == 0 and _blas_depth[1] not in (None, 1):
                    _OPENBLAS[1](_blas_depth[1])
        return False


# NumPy buffers strided ufunc operands through a buffer of this many elements; the default
# (8192: 3 operands x 32 KiB for float32) spills L1 and makes strided ufuncs (tap adds, the
# conv epilogue, pooling) ~3x slower than with 2048 on the machines measured.
UFUNC_BUFSIZE = 2048

# Elementwise work is split across threads only with at least this many elements per thread
# (a hand-off costs ~50 us; below this the split measured no faster).
MIN_SPLIT = 1 << 17


def _small_buffers(fn, a, b):
    old = np.setbufsize(UFUNC_BUFSIZE)  # thread/context-local in NumPy; restored below
    try:
        return fn(a, b)
    finally:
        np.setbufsize(old)


def default_threads():
    """GPUCNN_NUMPY_THREADS, else the usable cores (at most 8)."""
    env = os.environ.get("GPUCNN_NUMPY_THREADS")
    if env:
        return max(1, int(env))
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def split(n, parts, quantum=1):
    """Split range(n) into <= parts contiguous ranges whose bounds are multiples of quantum."""
    units = -(-n // quantum)
    parts = max(1, min(parts, units))
    bounds = [min(n, quantum * ((units * k) // parts)) for k in range(parts + 1)]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def _spin_us(name, default):
    env = os.environ.get(name, "").strip()
    try:
        return max(0, int(env)) if env else default
    except ValueError:
        raise ValueError(f"{name}={env!r}: expected a whole number of microseconds") from None


_spinner = []


def _spin_fn():
    """spin_while_equal(flag, seen, max_ns) of spin.cpp, or None (no compiler: plain locks)."""
    if not _spinner:
        fn = None
        try:
            from . import native
            fn = native.load(Path(__file__).with_name("spin.cpp")).spin_while_equal
            fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long]
            fn.restype = ctypes.c_int
        except native.NativeUnavailable:
            pass
        _spinner.append(fn)
    return _spinner[0]


class _Worker:
    """One persistent helper thread; a job is handed over with two plain locks, and each side
    first spins a while (spin.cpp, GIL released) on a counter the other side bumps after
    releasing its lock, so a hand-off that comes soon costs no wake-up (blocked, a round trip
    measured ~120 us on a 2-vCPU VM; spinning, ~10 us). The locks alone decide correctness:
    the counters are hints. ``$GPUCNN_SPIN_US``: how long an idle worker, or the caller
    waiting for a result, spins before it blocks (default 500; 0: never; kept short because
    a spinning caller competes with its worker where the CPUs are oversubscribed)."""

    def __init__(self, spin, spin_ns):
        self._go = _thread.allocate_lock()
        self._go.acquire()
        self._done = _thread.allocate_lock()
        self._done.acquire()
        self._job = self._result = None
        self._spin, self._spin_ns = spin, spin_ns
        self._flags = np.zeros(2, np.int32)  # jobs handed over, jobs finished
        self._seen = [0, 0]  # what the worker / the caller last saw of them
        threading.Thread(target=self._loop, name="gpucnn-numpy", daemon=True).start()

    def _spin_until(self, i):
        if self._spin is not None and self._spin_ns:
            self._spin(self._flags.ctypes.data + 4 * i, self._seen[i], self._spin_ns)
        self._seen[i] = int(self._flags[i])

    def _loop(self):
        while True:
            self._spin_until(0)
            self._go.acquire()
            if self._job is None:  # stop(): its pool is gone
                return
            fn, a, b = self._job
            self._job = None
            try:
                self._result = (True, fn(a, b))
            except BaseException as exc:  # handed to the caller
                self._result = (False, exc)
            # The job's closure holds its pool: kept in this frame while idle, it would keep
            # the pool (and so this thread) alive for ever.
            del fn, a, b
            self._done.release()
            self._flags[1] += 1

    def submit(self, fn, a, b):
        self._job = (fn, a, b)
        self._go.release()
        self._flags[0] += 1

    def stop(self):
        """End the thread (from its pool's finalizer: an idle worker, no job pending)."""
        self._job = None
        self._go.release()

    def wait(self):
        self._spin_until(1)
        self._done.acquire()
        result, self._result = self._result, None
        return result


def _stop_all(workers):
    for worker in workers:
        worker.stop()


class ThreadPool:
    """``run(fn, ranges)`` spreads ``fn(a, b)`` over ``threads`` threads (the caller's
    included); ``ranges`` says how to cut the work."""

    def __init__(self, threads=None):
        self.threads = default_threads() if threads is None else max(1, int(threads))
        self._workers, self._workers_pid = [], None
        self._busy = threading.Lock()  # held while this pool's workers run a job

    def run(self, fn, ranges):
        """Call fn(a, b) for each range; returns the results in range order.

        The work runs with OpenBLAS on one thread and with a small ufunc buffer (both
        restored afterwards). If another thread is using this pool's workers at the moment,
        the ranges run here, in turn."""
        fn = functools.partial(_small_buffers, fn)
        if len(ranges) <= 1 or self.threads <= 1 or not self._busy.acquire(blocking=False):
            with one_blas_thread():
                return [fn(a, b) for a, b in ranges]
        try:
            if self._workers_pid != os.getpid():  # first use, or after a fork
                spin_ns = 1000 * _spin_us("GPUCNN_SPIN_US", 500)
                spin = _spin_fn() if spin_ns else None
                self._workers = [_Worker(spin, spin_ns) for _ in range(self.threads - 1)]
                self._workers_pid = os.getpid()
                # A pool that is collected ends its threads (a backend made per test, per
                # process, must not leave them blocked forever: threads are a finite resource).
                weakref.finalize(self, _stop_all, self._workers)
            with one_blas_thread():
                used = list(zip(self._workers, ranges[1:]))
                for worker, (a, b) in used:
                    worker.submit(fn, a, b)
                try:
                    first = [fn(*ranges[0])]
                    first += [fn(a, b) for a, b in ranges[len(used) + 1:]]
                finally:
                    done = [worker.wait() for worker, _ in used]  # never leave one running
            for ok, value in done:
                if not ok:
                    raise value
            return first[:1] + [value for _, value in done] + first[1:]
        finally:
            self._busy.release()

    def matmul(self, a, b, out=None):
        """``a @ b`` (2-D) on this pool: b's columns split over the threads, OpenBLAS on one
        thread in each. Every GEMM of the tuned ops runs that way: OpenBLAS's own threads are
        as fast on a large GEMM, but its idle workers then spin for a while on the cores the
        next parallel op needs (LeNet-5's training step: 19-22 ms with them, 11-16 without)."""
        if out is None:
            out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))

        def work(c0, c1):
            np.matmul(a, b[:, c0:c1], out=out[:, c0:c1])

        self.run(work, self.ranges(b.shape[1], min_units=64))
        return out

    def ranges(self, n, quantum=1, min_units=1):
        """Split range(n) for the threads; a single range when there is too little work."""
        parts = self.threads if n // max(1, quantum) >= 2 * min_units else 1
        return split(n, parts, quantum)
