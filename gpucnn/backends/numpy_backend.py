"""The NumPy backend: the CPU reference every kernel is checked against, and the fallback.

It takes float32 (training) or float64 (the reference for equivalence tests) and computes in
the input's precision. Public arrays are NCHW (base.py); everything below is internal.

Convolution is im2col + GEMM. The general path (any stride, dilation, groups) builds a
channel-major column matrix ``cols[(c, i, j), (n, ho, wo)]`` so a conv is a single
``W(F, K) @ cols(K, n*Ho*Wo)``; its workspace is bounded by ``workspace_bytes``.

The fast path (stride 1, dilation 1, one group: LeNet, most of AlexNet) uses "wide" columns:
with the padded plane flattened row-major (width Wp), tap (i, j) of output position
``p = ho * Wp + wo`` is element ``p + i * Wp + j``, so every row of the column matrix is ONE
contiguous slice of the plane (the Wp - Wo positions past each output row are junk: computed,
then skipped; zero in every dy-side buffer, so they add nothing in backward). Columns are
grouped ``c`` images per GEMM, ``cols[chunk, (c_in, i, j) + a bias row of ones, (image, p)]``,
with ``c`` chosen so each GEMM stays in OpenBLAS's small-matrix regime (faster than its packed
path for these thin shapes); the bias rides in the GEMM and db falls out of the dW GEMM. The
epilogue (ReLU + dropping junk + NCHW order) is one strided pass. dx is col2im of W^T @ dy,
the exact adjoint of the im2col. A forward's column matrix is kept for the matching backward
(keyed by the identity of x, validated against a copy of x's contents, dropped when x dies).

Max-pool without padding: the window max is a tree of np.maximum over the taps (gathered into
contiguous blocks first), the switch the first tap equal to it (= the strict '>' fold, ties
to the first in row-major order); any NaN sends the call to the general fold. Backward with
non-overlapping windows is a scatter; ReLU backward a branch-free bitwise select.

Conv + ReLU + max-pool (base.Backend.conv2d_relu_maxpool, used by Sequential for such triples)
is fused on the fast conv path: forward, the pool gathers its taps (ReLU applied on the way)
straight from the GEMM output, so the full-size activation is never written; backward (pool
windows not overlapping), the pooled gradient, masked where the pooled output is > 0, is
scattered to the switches directly in the wide dy buffer of the conv backward.

Speed plumbing, all internal and scoped: batches are split over ``threads`` Python threads
(GPUCNN_NUMPY_THREADS; NumPy and OpenBLAS release the GIL); OpenBLAS is held to one thread
inside those regions (via its own C API, restored afterwards); NumPy's ufunc buffer is made
small there (context-local; strided ufuncs ran ~3x faster); scratch buffers are reused per
thread; large results come from a pool recycled by reference count (no page faults).
"""
from __future__ import annotations

import ctypes
import functools
import glob
import os
import sys
import sysconfig
import _thread
import threading
import weakref

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .base import Backend, adam_bias_corrections, dropout_hash, dropout_threshold

__all__ = ["NumpyBackend", "blas_threads", "openblas_info"]

# GEMMs up to this many multiply-adds (M*N*K) stay on OpenBLAS's single-threaded small-matrix
# kernels, which on this kind of shape (tiny M) beat its packed path by up to 2x.
_GEMM_MNK = 1_000_000


# ---- OpenBLAS thread control (scoped; no dependency) ----------------------------------------
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
    """What this backend found of NumPy's OpenBLAS at run time (for benchmark reports)."""
    if not _OPENBLAS:
        return {"found": False}
    get, _, core, path = _OPENBLAS
    return {"found": True, "path": path, "threads_now": get(),
            "corename": core().decode() if core else None}
_blas_lock = threading.Lock()
_blas_depth = [0, None]  # nesting depth, saved thread count


def blas_threads():
    """OpenBLAS's current thread count (None when it cannot be queried)."""
    return _OPENBLAS[0]() if _OPENBLAS else None


class _OneBlasThread:
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
_UFUNC_BUFSIZE = 2048

# Results handed to callers are recycled by reference count (see NumpyBackend._output) only
# where that count is exact: CPython with the GIL.
_REFCOUNT_POOL = (sys.implementation.name == "cpython"
                  and not sysconfig.get_config_var("Py_GIL_DISABLED"))
_POOL_MIN_BYTES = 256 << 10

# Elementwise work is split across threads only with at least this many elements per thread
# (a hand-off costs ~50 us; below this the split measured no faster).
_MIN_SPLIT = 1 << 17

# Linear layers split the batch over our threads from this many multiply-adds (n * in * out);
# below it one GEMM call with OpenBLAS's own threads measured faster (LeNet's 128x400x120).
_LINEAR_SPLIT = 50_000_000


def _small_buffers(fn, a, b):
    old = np.setbufsize(_UFUNC_BUFSIZE)  # thread/context-local in NumPy; restored below
    try:
        return fn(a, b)
    finally:
        np.setbufsize(old)


def _default_threads():
    env = os.environ.get("GPUCNN_NUMPY_THREADS")
    if env:
        return max(1, int(env))
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def _split(n, parts, quantum=1):
    """Split range(n) into <= parts contiguous ranges whose bounds are multiples of quantum."""
    units = -(-n // quantum)
    parts = max(1, min(parts, units))
    bounds = [min(n, quantum * ((units * k) // parts)) for k in range(parts + 1)]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def _largest_divisor(n, cmax):
    for c in range(max(1, min(n, cmax)), 0, -1):
        if n % c == 0:
            return c
    return 1


def _gemm_chunk(n, mnk_per_image):
    """Images per GEMM: the largest divisor of n keeping M*N*K within _GEMM_MNK."""
    return _largest_divisor(n, _GEMM_MNK // max(1, mnk_per_image))


def _pad_hw(x, ph, pw, value=0.0):
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def _window_view(xp, g, kh_step, kw_step):
    """View (N, C, kh, kw, Ho, Wo) of the padded input: element [n, c, i, j, ho, wo] is
    xp[n, c, ho*sh + i*kh_step, wo*sw + j*kw_step]."""
    sN, sC, sH, sW = xp.strides
    N, C = xp.shape[:2]
    return as_strided(xp, (N, C, g.kh, g.kw, g.Ho, g.Wo),
                      (sN, sC, sH * kh_step, sW * kw_step, sH * g.sh, sW * g.sw),
                      writeable=False)


def _tap_slices(g, i, j, dh=1, dw=1):
    """Slices of the padded plane touched by kernel tap (i, j) over all output positions."""
    h0, w0 = i * dh, j * dw
    return (slice(h0, h0 + g.sh * (g.Ho - 1) + 1, g.sh),
            slice(w0, w0 + g.sw * (g.Wo - 1) + 1, g.sw))


def _fast_conv(g):
    return g.groups == 1 and g.sh == 1 and g.sw == 1 and g.dh == 1 and g.dw == 1


class _WideDims:
    """Sizes of the wide-column layout: padded plane Hp x Wp, L wide positions per image
    (the last output row is not padded out), K1 = K + the bias row, c images per GEMM."""

    def __init__(self, g):
        self.Hp, self.Wp = g.H + 2 * g.ph, g.W + 2 * g.pw
        self.L = (g.Ho - 1) * self.Wp + g.Wo
        self.K1 = g.K + 1
        if g.F * self.K1 * self.L >= _GEMM_MNK:
            # One image's GEMM is already past OpenBLAS's small-matrix regime: longer GEMMs
            # are faster (AlexNet conv3 forward at batch 16: 60 -> 29 ms), so one GEMM per storage
            # chunk of up to half the batch (one chunk per worker thread), at most 32 images.
            self.c = self.cb = _largest_divisor(g.N, min(32, g.N // 2))
        else:
            self.c = _gemm_chunk(g.N, g.F * self.K1 * self.L)
            # Storage chunk (images per block of cols / dy): a multiple of c, so forward and
            # dx GEMMs run on c-image column blocks while dW gets one long-K GEMM per block,
            # which OpenBLAS does faster when K1 is large (LeNet conv2: 2.9 -> 1.9 ms).
            self.cb = _storage_chunk(g.N, self.c, self.K1)
        self.m = self.cb // self.c
        self.key = (g.H, g.W, g.kh, g.kw, g.ph, g.pw, self.c, self.cb)


def _storage_chunk(n, c, k1):
    if k1 < 64:
        return c
    best = c
    for cb in range(c, min(n, 32) + 1, c):
        if n % cb == 0:
            best = cb
    return best


def _view(a, shape):
    """a reshaped without a copy (raises rather than silently copying)."""
    v = a.view()
    try:
        return np.reshape(v, shape, copy=False)
    except TypeError:  # NumPy < 2.1: no copy= keyword
        v.shape = shape
        return v


def _wide_to_nchw(a, g, d, c):
    """View (chunks, c, F, Ho, Wo) of a wide array (chunks, F, c * L): skips junk columns."""
    s = a.itemsize
    return as_strided(a, (a.shape[0], c, g.F, g.Ho, g.Wo),
                      (a.strides[0], d.L * s, a.strides[1], d.Wp * s, s))


def _subchunks(a, d, rows):
    """View (blocks, m, rows, c * L) of a (blocks, rows, cb * L) array: its c-image GEMM
    column blocks."""
    s = a.itemsize
    return as_strided(a, (a.shape[0], d.m, rows, d.c * d.L),
                      (a.strides[0], d.c * d.L * s, a.strides[1], s))


def _pool_base(g):
    """(Ho, Wo) int32: the index h * W + w of each window's top-left element (no padding)."""
    return (np.arange(g.Ho, dtype=np.int32)[:, None] * (g.sh * g.W)
            + np.arange(g.Wo, dtype=np.int32)[None, :] * g.sw)


def _plane_windows(xr, g):
    """View (P, kh, kw, Ho, Wo) of unpadded planes xr (P, H, W)."""
    sP, sH, sW = xr.strides
    return as_strided(xr, (xr.shape[0], g.kh, g.kw, g.Ho, g.Wo),
                      (sP, sH, sW, sH * g.sh, sW * g.sw), writeable=False)


class _Worker:
    """One persistent helper thread; a job is handed over with two plain locks (~20 us per
    round trip, against ~50 us for a ThreadPoolExecutor future)."""

    def __init__(self):
        self._go = _thread.allocate_lock()
        self._go.acquire()
        self._done = _thread.allocate_lock()
        self._done.acquire()
        self._job = self._result = None
        threading.Thread(target=self._loop, name="gpucnn-numpy", daemon=True).start()

    def _loop(self):
        while True:
            self._go.acquire()
            fn, a, b = self._job
            self._job = None
            try:
                self._result = (True, fn(a, b))
            except BaseException as exc:  # handed to the caller
                self._result = (False, exc)
            self._done.release()

    def submit(self, fn, a, b):
        self._job = (fn, a, b)
        self._go.release()

    def wait(self):
        self._done.acquire()
        result, self._result = self._result, None
        return result


class _ColsEntry:
    __slots__ = ("ref", "key", "x", "cols")

    def __init__(self, ref, key, x, cols):
        self.ref, self.key, self.x, self.cols = ref, key, x, cols


class NumpyBackend(Backend):
    name = "numpy"
    xp = np
    float_dtypes = (np.dtype(np.float32), np.dtype(np.float64))

    def __init__(self, workspace_bytes=None, threads=None, cache_cols=True):
        if workspace_bytes is None:
            workspace_bytes = int(float(os.environ.get("GPUCNN_WORKSPACE_MB", "256")) * 2**20)
        self.workspace_bytes = int(workspace_bytes)
        # Python threads splitting a batch (GPUCNN_NUMPY_THREADS; default: usable cores, <= 8).
        self.threads = _default_threads() if threads is None else max(1, int(threads))
        self.cache_cols = bool(cache_cols)
        self._workers, self._workers_pid = [], None
        self._busy = threading.Lock()  # held while this backend's workers run a job
        self._lock = threading.Lock()
        self._cols_cache = {}  # id(x) -> _ColsEntry, forward -> backward
        self._local = threading.local()  # per-thread scratch buffers
        self._spare = {}  # (shape, dtype) -> column buffers free for reuse (no page faults)
        self._outputs = {}  # (shape, dtype) -> result blocks, see _output

    # ---- internal helpers: threads, scratch buffers, the forward->backward column cache -------
    def _run(self, fn, ranges):
        """Call fn(a, b) for each range, spread over self.threads threads (this one included).

        The work runs with OpenBLAS on one thread and with a small ufunc buffer (both
        restored afterwards; the buffer size is context-local in NumPy >= 2). If another
        thread is using this backend's workers at the moment, the ranges run here, in turn."""
        fn = functools.partial(_small_buffers, fn)
        if len(ranges) <= 1 or self.threads <= 1 or not self._busy.acquire(blocking=False):
            with _OneBlasThread():
                return [fn(a, b) for a, b in ranges]
        try:
            if self._workers_pid != os.getpid():  # first use, or after a fork
                self._workers = [_Worker() for _ in range(self.threads - 1)]
                self._workers_pid = os.getpid()
            with _OneBlasThread():
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

    def _ranges(self, n, quantum=1, min_units=1):
        """Split range(n) for the threads; a single range when there is too little work."""
        parts = self.threads if n // max(1, quantum) >= 2 * min_units else 1
        return _split(n, parts, quantum)

    def _scratch(self, tag, shape, dtype, zero=False):
        """A reusable per-thread buffer (never handed to the caller). zero=True buffers are
        zeroed once when created; callers rely on the parts they never write staying zero."""
        bufs = getattr(self._local, "bufs", None)
        if bufs is None:
            bufs = self._local.bufs = {}
        key = (tag, tuple(shape), np.dtype(dtype).str)
        buf = bufs.get(key)
        if buf is None:
            buf = (np.zeros if zero else np.empty)(shape, dtype=dtype)
            # Shapes come and go (a last, smaller batch; other models): stay bounded.
            if len(bufs) >= 64 or sum(b.nbytes for b in bufs.values()) + buf.nbytes > max(
                    2 * self.workspace_bytes, 64 << 20):
                bufs.clear()
            bufs[key] = buf
        return buf

    def _output(self, shape, dtype):
        """A C-contiguous array for a result handed to the caller. Large ones come from a
        few blocks per shape that are reused once nothing but this pool refers to them
        (CPython reference count): views, memoryviews and arrays built on a block all keep
        a reference to it, so a block still in use anywhere is never handed out again.
        This saves the page faults of fresh large allocations (~1 us per 4 KiB page)."""
        dtype = np.dtype(dtype)
        nbytes = dtype.itemsize * int(np.prod(shape))
        if not _REFCOUNT_POOL or nbytes < _POOL_MIN_BYTES:
            return np.empty(shape, dtype=dtype)
        key = (tuple(shape), dtype.str)
        with self._lock:
            blocks = self._outputs.get(key)
            if blocks is None:
                if sum(b.nbytes for lst in self._outputs.values() for b in lst) + nbytes > (
                        self.workspace_bytes):
                    self._outputs.clear()  # shapes come and go: stay bounded
                blocks = self._outputs[key] = []
            for blk in blocks:
                # References: the list, this loop variable and getrefcount's argument.
                if sys.getrefcount(blk) <= 3:
                    return blk
            blk = np.empty(shape, dtype=dtype)
            if len(blocks) < 4:
                blocks.append(blk)
            return blk

    def _take_cols(self, shape, dtype):
        with self._lock:
            spares = self._spare.get((tuple(shape), np.dtype(dtype).str))
            if spares:
                return spares.pop()
        return np.empty(shape, dtype=dtype)

    def _give_cols(self, cols):
        """Return a column buffer that nothing references any more, for the next forward."""
        key = (cols.shape, cols.dtype.str)
        with self._lock:
            total = sum(b.nbytes for lst in self._spare.values() for b in lst)
            if total + cols.nbytes > self.workspace_bytes:
                self._spare = {}  # shapes come and go (a last, smaller batch): stay bounded
            spares = self._spare.setdefault(key, [])
            if len(spares) < 2 and cols.nbytes <= self.workspace_bytes:
                spares.append(cols)

    def _cache_put(self, x, g, cols):
        if not self.cache_cols or cols.nbytes > self.workspace_bytes:
            return False
        key = id(x)
        cache = self._cols_cache
        try:
            ref = weakref.ref(x, lambda _r, key=key, cache=cache: cache.pop(key, None))
        except TypeError:
            return False
        entry = _ColsEntry(ref, (g, x.dtype.str, x.strides), x.copy(), cols)
        with self._lock:
            cache.pop(key, None)
            cache[key] = entry
            total = sum(e.cols.nbytes for e in cache.values())
            while cache and (len(cache) > 16 or total > self.workspace_bytes):
                old = cache.pop(next(iter(cache)))
                total -= old.cols.nbytes
        return True

    def _cache_take(self, x, g):
        """The cached column matrix of x, if x is the very array seen by forward, unchanged."""
        with self._lock:
            entry = self._cols_cache.pop(id(x), None)
        if (entry is None or entry.ref() is not x
                or entry.key != (g, x.dtype.str, x.strides)
                or not np.array_equal(entry.x, x)):
            return None
        return entry.cols

    def describe(self):
        blas = blas_threads()
        return (f"numpy (CPU, {self.threads} thread{'s' if self.threads > 1 else ''}"
                + (f"; OpenBLAS held to 1 inside, {blas} outside)" if blas else ")"))

    def asarray(self, a, dtype=None):
        a = np.asarray(a)
        if dtype is None:
            dtype = np.int32 if np.issubdtype(a.dtype, np.integer) else np.float32
        return np.ascontiguousarray(a, dtype=dtype)

    def to_numpy(self, a):
        return np.array(a, copy=True)

    # ---- convolution ------------------------------------------------------------------------
    def _chunks(self, g, itemsize):
        """Batch ranges whose column matrix (K x n*Ho*Wo) fits in the workspace."""
        per_image = g.K * g.Ho * g.Wo * itemsize
        step = max(1, self.workspace_bytes // max(per_image, 1))
        return [(n0, min(n0 + step, g.N)) for n0 in range(0, g.N, step)]

    def _im2col(self, xpad_chunk, g, c0):
        """cols (K, n*Ho*Wo) for channels [c0, c0 + Cg) of a padded batch chunk."""
        view = _window_view(xpad_chunk[:, c0:c0 + g.Cg], g, g.dh, g.dw)
        n = xpad_chunk.shape[0]
        return view.transpose(1, 2, 3, 0, 4, 5).reshape(g.K, n * g.Ho * g.Wo)

    def _col2im_add(self, dcols, dxpad_chunk, g, c0):
        """Scatter-add cols back into the padded gradient (the adjoint of _im2col)."""
        n = dxpad_chunk.shape[0]
        d = dcols.reshape(g.Cg, g.kh, g.kw, n, g.Ho, g.Wo)
        for i in range(g.kh):
            for j in range(g.kw):
                hs, ws = _tap_slices(g, i, j, g.dh, g.dw)
                dxpad_chunk[:, c0:c0 + g.Cg, hs, ws] += d[:, i, j].transpose(1, 0, 2, 3)

    # -- the fast path: stride 1, dilation 1, one group; "wide" columns (module docstring) --
    def _conv2d(self, x, w, b, g, relu, epilogue=None):
        """epilogue(src, a, b) (fast path only), if given, replaces the write of y: src is the
        (chunks, c, F, Ho, Wo) view of images [a, b) of the GEMM output (before any ReLU) and
        the return value is the list of what it returned per thread range."""
        if w.dtype != x.dtype:
            raise TypeError(f"conv2d: w dtype {w.dtype} differs from x dtype {x.dtype}")
        if b is not None and b.dtype != x.dtype:
            b = b.astype(x.dtype)
        if not _fast_conv(g):
            return self._conv2d_generic(x, w, b, g, relu)
        d = _WideDims(g)
        wext = np.empty((g.F, d.K1), dtype=x.dtype)
        wext[:, :g.K] = w.reshape(g.F, g.K)
        wext[:, g.K] = 0 if b is None else b
        y = self._output(g.y_shape, x.dtype) if epilogue is None else []
        slices = self._wide_slices(g, d, x.itemsize)
        for s0, s1 in slices:
            cols = self._take_cols(((s1 - s0) // d.cb, d.K1, d.cb * d.L), x.dtype)
            out = self._scratch("conv_out", ((s1 - s0) // d.c, g.F, d.c * d.L), x.dtype)

            def work(a, b_, s0=s0, cols=cols, out=out):
                ka, kb = (a - s0) // d.cb, (b_ - s0) // d.cb
                oa, ob = (a - s0) // d.c, (b_ - s0) // d.c
                self._im2col_wide(x, g, d, a, b_, cols[ka:kb])
                np.matmul(wext, _subchunks(cols[ka:kb], d, d.K1),
                          out=out[oa:ob].reshape(kb - ka, d.m, g.F, d.c * d.L))
                src = _wide_to_nchw(out[oa:ob], g, d, d.c)
                if epilogue is not None:
                    return epilogue(src, a, b_)
                dst = y[a:b_].reshape(ob - oa, d.c, g.F, g.Ho, g.Wo)
                if relu:
                    np.maximum(src, 0, out=dst)
                else:
                    np.copyto(dst, src)

            done = self._run(work, [(s0 + a, s0 + b_)
                                    for a, b_ in self._ranges(s1 - s0, d.cb)])
            if epilogue is not None:
                y += done
            if len(slices) == 1 and self._cache_put(x, g, cols):
                continue
            self._give_cols(cols)
        return y

    def _wide_slices(self, g, d, itemsize):
        """Batch slices (multiples of the GEMM chunk) whose columns fit the workspace."""
        per_chunk = d.K1 * d.cb * d.L * itemsize
        step = d.cb * max(1, self.workspace_bytes // max(per_chunk, 1))
        return [(n0, min(n0 + step, g.N)) for n0 in range(0, g.N, step)]

    def _im2col_wide(self, x, g, d, a, b, cols):
        """cols[chunk, (c_in, i, j), (image, p)] for images [a, b); last row = ones."""
        n = b - a
        if g.ph or g.pw:  # copy into a zero-bordered buffer (borders are never written)
            xp = self._scratch(("conv_pad", d.key), (n, g.C, d.Hp, d.Wp), x.dtype, zero=True)
            xp[:, :, g.ph:g.ph + g.H, g.pw:g.pw + g.W] = x[a:b]
        else:
            xp = x[a:b]
        sN, sC, sH, sW = xp.strides
        taps = as_strided(xp, (n // d.cb, g.C, g.kh, g.kw, d.cb, d.L),
                          (d.cb * sN, sC, sH, sW, sN, sW), writeable=False)
        np.copyto(_view(cols[:, :g.K], (n // d.cb, g.C, g.kh, g.kw, d.cb, d.L)), taps)
        cols[:, g.K] = 1

    def _conv2d_relu_maxpool(self, x, w, b, g, pg):
        # Fast path: the pool reads the GEMM output (ReLU applied as the taps are gathered)
        # while it is in cache; the full-size conv output is never written.
        if not (_fast_conv(g) and not (pg.ph or pg.pw)) or w.dtype != x.dtype:
            return super()._conv2d_relu_maxpool(x, w, b, g, pg)
        y = self._output(pg.y_shape, x.dtype)
        sw = self._output(pg.y_shape, np.int32)
        per = pg.Ho * pg.Wo
        yr, swr = y.reshape(g.N * g.F, pg.Ho, pg.Wo), sw.reshape(g.N * g.F, pg.Ho, pg.Wo)

        def epilogue(src, a, b_):
            # src (chunks, c, F, Ho, Wo) -> pool windows (chunks, c, F, kh, kw, Hp, Wp)
            s0, s1, s2, s3, s4 = src.strides
            win = as_strided(src, src.shape[:3] + (pg.kh, pg.kw, pg.Ho, pg.Wo),
                             (s0, s1, s2, s3, s4, s3 * pg.sh, s4 * pg.sw), writeable=False)
            n = b_ - a
            taps = self._scratch("fused_taps", (pg.kh, pg.kw) + src.shape[:3]
                                 + (pg.Ho, pg.Wo), x.dtype)
            np.maximum(win.transpose(3, 4, 0, 1, 2, 5, 6), 0, out=taps)  # ReLU on the way
            return self._pool_taps(taps.reshape(pg.kh, pg.kw, n * g.F, pg.Ho, pg.Wo), pg,
                                   yr[a * g.F:b_ * g.F], swr[a * g.F:b_ * g.F])

        if all(self._conv2d(x, w, b, g, True, epilogue=epilogue)):
            return y, sw
        return super()._conv2d_relu_maxpool(x, w, b, g, pg)  # a NaN: the general pool

    def _conv2d_relu_maxpool_backward(self, dy, switches, y, x, w, g, pg, need_dx, need_dw):
        # Fast path: the pooled gradient (ReLU mask taken on the pooled output, see base.py)
        # is scattered straight into the conv backward's wide dy buffer: no full-size dy for
        # the pool or ReLU backward. Needs non-overlapping, unpadded pool windows.
        if not (_fast_conv(g) and pg.sh >= pg.kh and pg.sw >= pg.kw
                and not (pg.ph or pg.pw)):
            return super()._conv2d_relu_maxpool_backward(dy, switches, y, x, w, g, pg,
                                                         need_dx, need_dw)
        plane = g.Ho * g.Wo
        if switches.size and (switches.min() < 0 or switches.max() >= plane):
            raise ValueError(f"max_pool2d_backward: switches must lie in [0, {plane}) for "
                             f"input planes of {g.Ho}x{g.Wo}")
        return self._conv2d_backward(None, x, w, g, need_dx, need_dw, pooled=(dy, switches, y))

    def _scatter_pooled(self, pooled, g, d, a, b, dyw):
        """dyw (the wide dy of images [a, b), zeroed here) = the pool + ReLU backward of the
        pooled gradient: dy at each switch where the pooled output is > 0, else 0."""
        dyp, sw, yp = pooled
        n, per = b - a, sw[0, 0].size
        shape = (n, g.F, per)
        dyw.fill(0)
        # the wide index of each switch: a table maps h * Wo + w -> h * Wp + w, then add
        # each (image-in-block, channel) row's offset (block i // cb, slot i % cb)
        plane = np.arange(g.Ho * g.Wo, dtype=np.intp)
        table = plane + (plane // g.Wo) * (d.Wp - g.Wo)
        pos = self._scratch("fused_pos", shape, np.intp)
        np.take(table, sw[a:b].reshape(shape), out=pos, mode="clip")  # checked: in range
        i = np.arange(n, dtype=np.intp)
        base = ((i // d.cb)[:, None] * g.F + np.arange(g.F, dtype=np.intp)[None, :]) * d.cb
        pos += ((base + (i % d.cb)[:, None]) * d.L)[:, :, None]
        # values: dy where the pooled output is > 0, else +0 (a branch-free bitwise select,
        # exactly as _relu_backward)
        it = np.int32 if dyw.itemsize == 4 else np.int64
        keep = self._scratch("fused_keep", shape, np.bool_)
        mask = self._scratch("fused_mask", shape, it)
        vals = self._scratch("fused_vals", shape, dyw.dtype)
        np.greater(yp[a:b].reshape(shape), 0, out=keep)
        np.negative(keep.view(np.int8), out=mask)  # 0 or all ones
        np.bitwise_and(dyp[a:b].reshape(shape).view(it), mask, out=vals.view(it))
        dyw.reshape(-1)[pos.reshape(-1)] = vals.reshape(-1)

    def _conv2d_backward(self, dy, x, w, g, need_dx=True, need_dw=True, pooled=None):
        if not _fast_conv(g):
            return self._conv2d_backward_generic(dy, x, w, g, need_dx, need_dw)
        d = _WideDims(g)
        dt = x.dtype
        if pooled is not None:
            pooled = tuple(a.astype(dt, copy=False) if a.dtype.kind == "f" else a
                           for a in pooled)
        else:
            dy = dy.astype(dt, copy=False)
        w = w.astype(dt, copy=False)  # compute in x's precision
        slices = self._wide_slices(g, d, x.itemsize)
        cached = self._cache_take(x, g) if len(slices) == 1 else None
        if not (need_dx or need_dw):
            if cached is not None:
                self._give_cols(cached)
            return None, None, None
        # dx: rows of W^T in tap-major order (i, j, c_in): each tap's block of dcols is then
        # one (C, image, L) block.
        wT = (np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(g.K, g.F)) if need_dx
              else None)
        dx = self._output(g.x_shape, dt) if need_dx else None
        dwT = np.zeros((d.K1, g.F), dtype=dt) if need_dw else None
        for s0, s1 in slices:
            ns, nbl = s1 - s0, (s1 - s0) // d.cb
            cols = None
            if need_dw:
                cols = (cached if cached is not None
                        else self._take_cols((nbl, d.K1, d.cb * d.L), dt))
            # Zero-invariant scratch (junk positions are never written): keyed by geometry.
            dyw = self._scratch(("conv_dyw", d.key), (nbl, g.F, d.cb * d.L), dt, zero=True)
            dcols = (self._scratch("conv_dcols", (ns // d.c, g.K, d.c * d.L), dt) if need_dx
                     else None)

            def work(a, b, s0=s0, cols=cols):
                ka, kb = (a - s0) // d.cb, (b - s0) // d.cb
                if pooled is not None:
                    self._scatter_pooled(pooled, g, d, a, b, dyw[ka:kb])
                else:  # dy into the wide layout; junk columns stay zero (never written).
                    np.copyto(_wide_to_nchw(dyw[ka:kb], g, d, d.cb),
                              dy[a:b].reshape(kb - ka, d.cb, g.F, g.Ho, g.Wo))
                part = None
                if need_dw:
                    if cached is None:
                        self._im2col_wide(x, g, d, a, b, cols[ka:kb])
                    part = np.matmul(cols[ka:kb], dyw[ka:kb].transpose(0, 2, 1)).sum(axis=0)
                if need_dx:
                    self._conv_dx(wT, g, d, a - s0, b - s0, dyw, dcols, dx[a:b])
                return part

            parts = self._run(work, [(s0 + a, s0 + b) for a, b in self._ranges(ns, d.cb)])
            if need_dw:
                for part in parts:
                    dwT += part
            if cols is not None:
                self._give_cols(cols)
        if not need_dw:
            return dx, None, None
        dw = np.ascontiguousarray(dwT[:g.K].T).reshape(w.shape)
        return dx, dw, dwT[g.K].copy()

    def _conv_dx(self, wT, g, d, a, b, dyw, dcols, dx):
        """dx (images [a, b) of the slice) = col2im(W^T @ dy) on the wide layout (the adjoint
        of _im2col_wide): small GEMMs, then kh * kw strided adds of L-long rows into padded
        planes (with NumPy's ufunc buffer made small, see _UFUNC_BUFSIZE)."""
        n, c = b - a, d.c
        ca, cb = a // c, b // c
        ka, kb = a // d.cb, b // d.cb
        np.matmul(wT, _subchunks(dyw[ka:kb], d, g.F),
                  out=dcols[ca:cb].reshape(kb - ka, d.m, g.K, c * d.L))
        if g.ph or g.pw:
            dxp = self._scratch(("conv_dxpad", d.key), (n, g.C, d.Hp, d.Wp), dx.dtype)
        else:
            dxp = dx
        dxp.fill(0)
        sN, sC = dxp.strides[:2]
        sW = dxp.itemsize
        flat = dxp.reshape(n, g.C, d.Hp * d.Wp)
        # rows of wT are tap-major (i, j, c_in)
        src = _view(dcols[ca:cb], (cb - ca, g.kh, g.kw, g.C, c, d.L))
        for i in range(g.kh):
            for j in range(g.kw):
                dst = as_strided(flat[:, :, i * d.Wp + j:], (n // c, g.C, c, d.L),
                                 (c * sN, sC, sN, sW))
                np.add(dst, src[:, i, j], out=dst)
        if dxp is not dx:
            np.copyto(dx, dxp[:, :, g.ph:g.ph + g.H, g.pw:g.pw + g.W])

    # -- the general path: any stride / dilation / groups ------------------------------------
    def _conv2d_generic(self, x, w, b, g, relu):
        y = np.empty(g.y_shape, dtype=x.dtype)
        xpad = _pad_hw(x, g.ph, g.pw)
        wmat = w.reshape(g.F, g.K)
        for n0, n1 in self._chunks(g, x.itemsize):
            for gi in range(g.groups):
                f0 = gi * g.Fg
                cols = self._im2col(xpad[n0:n1], g, gi * g.Cg)
                out = wmat[f0:f0 + g.Fg] @ cols  # (Fg, n*Ho*Wo), channel-major
                out = out.reshape(g.Fg, n1 - n0, g.Ho, g.Wo)
                if b is not None:
                    out += b[f0:f0 + g.Fg, None, None, None]
                if relu:
                    np.maximum(out, 0, out=out)
                y[n0:n1, f0:f0 + g.Fg] = out.transpose(1, 0, 2, 3)
        return y

    def _conv2d_backward_generic(self, dy, x, w, g, need_dx=True, need_dw=True):
        dt = x.dtype
        xpad = _pad_hw(x, g.ph, g.pw)
        dxpad = np.zeros(xpad.shape, dtype=dt) if need_dx else None
        wmat = w.reshape(g.F, g.K)
        dw = np.zeros((g.F, g.K), dtype=dt) if need_dw else None
        for n0, n1 in self._chunks(g, x.itemsize):
            n = n1 - n0
            for gi in range(g.groups):
                f0, c0 = gi * g.Fg, gi * g.Cg
                dy_g = dy[n0:n1, f0:f0 + g.Fg].transpose(1, 0, 2, 3).reshape(
                    g.Fg, n * g.Ho * g.Wo)
                if need_dw:
                    dw[f0:f0 + g.Fg] += dy_g @ self._im2col(xpad[n0:n1], g, c0).T
                if need_dx:
                    self._col2im_add(wmat[f0:f0 + g.Fg].T @ dy_g, dxpad[n0:n1], g, c0)
        dx = (np.ascontiguousarray(dxpad[:, :, g.ph:g.ph + g.H, g.pw:g.pw + g.W])
              if need_dx else None)
        if not need_dw:
            return dx, None, None
        return dx, dw.reshape(w.shape), dy.sum(axis=(0, 2, 3))

    # ---- pooling ------------------------------------------------------------------------------
    def _max_pool2d(self, x, g):
        if g.ph or g.pw:
            return self._max_pool2d_generic(x, g)
        # Unpadded: the window max by a tree of np.maximum (exact), then the switch is the
        # first tap (row-major) equal to it: the same as a strict '>' fold, ties included.
        # A NaN anywhere makes np.maximum disagree with the fold: then the generic path runs.
        P, kk, plane = g.N * g.C, g.kh * g.kw, g.H * g.W
        xr = x.reshape(P, g.H, g.W)
        y = self._output(g.y_shape, x.dtype)
        sw = self._output(g.y_shape, np.int32)
        yr, swr = y.reshape(P, g.Ho, g.Wo), sw.reshape(P, g.Ho, g.Wo)

        def work(a, b):
            # One strided gather makes every tap a contiguous block; all later passes are
            # then long contiguous SIMD loops instead of short strided rows.
            taps = self._scratch("pool_taps", (g.kh, g.kw, b - a, g.Ho, g.Wo), x.dtype)
            np.copyto(taps, _plane_windows(xr[a:b], g).transpose(1, 2, 0, 3, 4))
            return self._pool_taps(taps, g, yr[a:b], swr[a:b])

        if all(self._run(work, self._ranges(P, min_units=max(1, _MIN_SPLIT // plane)))):
            return y, sw
        return self._max_pool2d_generic(x, g)

    def _pool_taps(self, taps, g, y, out):
        """Max-pool (no padding) from gathered taps (kh, kw, n, Ho, Wo): the window maxima into
        y (n, Ho, Wo) and the switches into out (n, Ho, Wo); False (results unusable) if
        there is a NaN."""
        kk, n = g.kh * g.kw, taps.shape[2]
        m = n * g.Ho * g.Wo
        base = _pool_base(g)
        cdt = np.uint8 if kk < 256 else np.int32
        t = taps.reshape(kk, m)
        ys = y.reshape(m)
        if kk == 1:
            np.copyto(ys, t[0])
        else:
            np.maximum(t[0], t[1], out=ys)
            for i in range(2, kk):
                np.maximum(ys, t[i], out=ys)
        if np.isnan(ys).any():
            return False
        if kk == 1:
            out[...] = base
            return True
        notyet = self._scratch("pool_notyet", (m,), np.bool_)
        ne = self._scratch("pool_ne", (m,), np.bool_)
        count = self._scratch("pool_count", (m,), cdt)
        np.not_equal(t[0], ys, out=notyet)  # no maximum among the taps seen so far
        np.copyto(count, notyet)
        for i in range(1, kk - 1):
            np.not_equal(t[i], ys, out=ne)
            np.bitwise_and(notyet, ne, out=notyet)
            np.add(count, notyet, out=count, casting="unsafe")  # -> first max's tap
        count = count.reshape(n, g.Ho, g.Wo)
        W = np.int32(g.W)  # offsets computed in int32 (never in count's small dtype)
        if g.kw == 1:
            np.multiply(count, W, out=out, dtype=np.int32)
        elif g.kw == 2:
            np.multiply(count >> 1, W, out=out, dtype=np.int32)
            np.add(out, count & 1, out=out, dtype=np.int32)
        else:
            i, j = np.divmod(count, cdt(g.kw))
            np.multiply(i, W, out=out, dtype=np.int32)
            np.add(out, j, out=out, dtype=np.int32)
        out += base
        return True

    def _max_pool2d_generic(self, x, g):
        xpad = _pad_hw(x, g.ph, g.pw, value=-np.inf)
        view = _window_view(xpad, g, 1, 1)
        best = view[:, :, 0, 0].copy()
        arg = np.zeros(g.y_shape, dtype=np.int32)
        # Strict '>' over taps in row-major order: the first maximum wins ties.
        for t in range(1, g.kh * g.kw):
            v = view[:, :, t // g.kw, t % g.kw]
            better = v > best
            np.copyto(best, v, where=better)
            np.copyto(arg, t, where=better)
        ti, tj = np.divmod(arg, g.kw)
        h = np.arange(g.Ho, dtype=np.int32)[:, None] * g.sh - g.ph + ti
        w = np.arange(g.Wo, dtype=np.int32)[None, :] * g.sw - g.pw + tj
        return best, (h * g.W + w).astype(np.int32)

    def _max_pool2d_backward(self, dy, switches, g):
        plane = g.H * g.W
        if switches.size and (switches.min() < 0 or switches.max() >= plane):
            raise ValueError(f"max_pool2d_backward: switches must lie in [0, {plane}) for "
                             f"input planes of {g.H}x{g.W}")
        if g.sh >= g.kh and g.sw >= g.kw and not (g.ph or g.pw):
            # Windows do not overlap: every input element has at most one switch pointing at
            # it (switches from max_pool2d lie in their own window), so a scatter suffices.
            P, per = g.N * g.C, g.Ho * g.Wo
            dx = self._output(g.x_shape, dy.dtype)
            flat, swr, dyr = dx.reshape(-1), switches.reshape(P, per), dy.reshape(P, per)

            def work(a, b):
                flat[a * plane:b * plane] = 0
                idx = self._scratch("pool_idx", (b - a, per), np.intp)
                np.add(swr[a:b], (np.arange(a, b, dtype=np.intp) * plane)[:, None], out=idx)
                flat[idx.reshape(-1)] = dyr[a:b].reshape(-1)

            self._run(work, self._ranges(P, min_units=max(1, _MIN_SPLIT // plane)))
            return dx
        base = (np.arange(g.N * g.C, dtype=np.int64) * plane).reshape(g.N, g.C, 1, 1)
        # bincount sums duplicates in index order, so overlapping windows are deterministic.
        dx = np.bincount((base + switches).ravel(), weights=dy.ravel(),
                         minlength=g.N * g.C * plane)
        return dx.astype(dy.dtype).reshape(g.x_shape)

    def _avg_pool2d(self, x, g):
        view = _window_view(_pad_hw(x, g.ph, g.pw), g, 1, 1)
        return (view.sum(axis=(2, 3)) / (g.kh * g.kw)).astype(x.dtype)

    def _avg_pool2d_backward(self, dy, g):
        dxpad = np.zeros((g.N, g.C, g.H + 2 * g.ph, g.W + 2 * g.pw), dtype=dy.dtype)
        share = dy / dy.dtype.type(g.kh * g.kw)
        for i in range(g.kh):
            for j in range(g.kw):
                hs, ws = _tap_slices(g, i, j)
                dxpad[:, :, hs, ws] += share
        return np.ascontiguousarray(dxpad[:, :, g.ph:g.ph + g.H, g.pw:g.pw + g.W])

    # ---- activations, linear, loss ---------------------------------------------------------------
    def _relu(self, x):
        return np.maximum(x, 0)

    def _relu_backward(self, dy, y):
        if y.dtype != dy.dtype:
            return np.where(y > 0, dy, 0).astype(dy.dtype, copy=False)
        # dx = dy where y > 0 else 0, as a bitwise AND with a 0 / all-ones mask: branch-free
        # (np.where and masked copies are ~5x slower on random masks) and exact (NaN, -0.0).
        it = np.int32 if dy.itemsize == 4 else np.int64
        dx = self._output(dy.shape, dy.dtype)
        yf, dyf, dxf = y.reshape(-1), dy.reshape(-1).view(it), dx.reshape(-1).view(it)

        def work(a, b):
            pos = self._scratch("relu_pos", (b - a,), np.bool_)
            mask = self._scratch("relu_mask", (b - a,), it)
            np.greater(yf[a:b], 0, out=pos)
            np.negative(pos.view(np.int8), out=mask)  # 0 or all ones
            np.bitwise_and(dyf[a:b], mask, out=dxf[a:b])

        self._run(work, self._ranges(dy.size, 4096, min_units=max(1, _MIN_SPLIT // 4096)))
        return dx

    def _linear(self, x, w, b, relu):
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

        self._run_linear(work, self._linear_ranges(x.shape[0], w.size))
        return y

    def _run_linear(self, fn, ranges):
        """A single range runs here, directly: OpenBLAS then uses its own threads, which for
        these small GEMMs (LeNet's) measured ~2x faster than our split or one BLAS thread."""
        if len(ranges) == 1:
            return [fn(*ranges[0])]
        return self._run(fn, ranges)

    def _linear_ranges(self, n, wsize):
        """Row ranges for a (n x in) @ (in x out) GEMM: split only when it is worth it."""
        return self._ranges(n, 8, min_units=1) if n * wsize >= _LINEAR_SPLIT else [(0, n)]

    def _linear_backward(self, dy, x, w):
        n = x.shape[0]
        dx = np.empty(x.shape, dtype=x.dtype)
        dw = np.empty(w.shape, dtype=x.dtype)

        def work_dx(a, b):
            np.matmul(dy[a:b], w, out=dx[a:b])

        def work_dw(a, b):  # rows of dw = output features
            np.matmul(dy[:, a:b].T, x, out=dw[a:b])

        big = n * w.size >= _LINEAR_SPLIT
        self._run_linear(work_dx, self._ranges(n, 8) if big else [(0, n)])
        self._run_linear(work_dw, self._ranges(w.shape[0], 8) if big else [(0, w.shape[0])])
        return dx, dw, dy.sum(axis=0)

    def _check_label_range(self, labels, classes):
        if labels.size and (labels.min() < 0 or labels.max() >= classes):
            raise ValueError(f"labels must lie in [0, {classes}) for {classes} classes, got "
                             f"values in [{labels.min()}, {labels.max()}]")

    def _softmax_cross_entropy(self, logits, labels):
        self._check_label_range(labels, logits.shape[1])
        m = logits.max(axis=1, keepdims=True)
        e = np.exp(logits - m)
        s = e.sum(axis=1, keepdims=True)
        probs = e / s
        rows = np.arange(logits.shape[0])
        nll = np.log(s[:, 0]) + m[:, 0] - logits[rows, labels]
        return np.asarray(nll.mean(), dtype=logits.dtype), probs

    def _softmax_cross_entropy_backward(self, probs, labels):
        self._check_label_range(labels, probs.shape[1])
        d = probs.copy()
        d[np.arange(probs.shape[0]), labels] -= 1
        d /= probs.shape[0]
        return d

    # ---- local response normalisation --------------------------------------------------------------
    @staticmethod
    def _channel_window_sum(a, before, after):
        """out[:, c] = sum of a[:, c - before .. c + after] (zeros outside the channels)."""
        C = a.shape[1]
        padded = np.pad(a, ((0, 0), (before, after), (0, 0), (0, 0)))
        out = np.zeros_like(a)
        for t in range(before + after + 1):
            out += padded[:, t:t + C]
        return out

    def _local_response_norm(self, x, size, alpha, beta, k):
        sq = self._channel_window_sum(x * x, size // 2, (size - 1) // 2)
        scale = (k + (alpha / size) * sq).astype(x.dtype)
        return (x * scale ** -beta).astype(x.dtype), scale

    def _local_response_norm_backward(self, dy, x, y, scale, size, alpha, beta, k):
        # dx_i = dy_i s_i^-b - (2ab/size) x_i * sum_{j: i in window(j)} dy_j y_j / s_j;
        # i lies in j's window exactly when j lies in the mirrored window around i.
        t = self._channel_window_sum(dy * y / scale, (size - 1) // 2, size // 2)
        dx = dy * scale ** -beta - (2.0 * alpha * beta / size) * x * t
        return dx.astype(x.dtype)

    # ---- dropout ------------------------------------------------------------------------------
    def _dropout(self, x, p, seed):
        h = dropout_hash(seed, np.arange(x.size, dtype=np.uint32)).reshape(x.shape)
        keep = (h >> np.uint32(8)) >= np.uint32(dropout_threshold(p))
        mask = keep * x.dtype.type(np.float32(1.0 / (1.0 - p)))
        return x * mask, mask.astype(x.dtype)

    def _dropout_backward(self, dy, mask):
        return dy * mask

    # ---- optimiser updates ---------------------------------------------------------------------
    def _sgd_update(self, param, grad, velocity, lr, momentum, weight_decay, nesterov):
        d = grad + weight_decay * param if weight_decay else grad
        if momentum:
            velocity *= momentum
            velocity += d
            d = d + momentum * velocity if nesterov else velocity
        param -= (lr * d).astype(param.dtype)

    def _adam_update(self, param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
        g = grad + weight_decay * param if weight_decay else grad
        m *= beta1
        m += (1 - beta1) * g
        v *= beta2
        v += (1 - beta2) * g * g
        c1, c2 = adam_bias_corrections(beta1, beta2, step)
        param -= ((lr / c1) * m / (np.sqrt(v) / c2 + eps)).astype(param.dtype)
