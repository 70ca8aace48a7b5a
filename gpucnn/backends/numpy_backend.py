"""The NumPy backend: the CPU reference every kernel is checked against, and the fallback.

It takes float32 (training) or float64 (the reference for equivalence tests) and computes in
the input's precision.

Convolution is im2col + GEMM. The general path (any stride, dilation, groups) builds a
channel-major column matrix ``cols[(c, i, j), (n, ho, wo)]`` so a conv is a single
``W(F, K) @ cols(K, n*Ho*Wo)``; its workspace is bounded by ``workspace_bytes``.

The fast path (stride 1, dilation 1, one group: LeNet, most of AlexNet) uses "wide" columns:
with the padded plane flattened row-major (width Wp), tap (i, j) of output position
``p = ho * Wp + wo`` is element ``p + i * Wp + j``, so every row of the column matrix is ONE
contiguous slice of the plane (the Wp - Wo columns past each output row are junk, computed and
then skipped). Columns are grouped ``c`` images per GEMM, chunk-major
``cols[chunk, (c_in, i, j) + bias row of ones, (image, p)]``, with ``c`` chosen so each GEMM
stays in OpenBLAS's small-matrix regime; the bias rides in the GEMM as an extra row of ones
(and db falls out of the dW GEMM). The epilogue (ReLU + dropping junk columns + NCHW order) is
one strided pass. The column matrix of a forward is kept for the matching backward (keyed by
the identity of x, checked against a copy of x's contents, dropped when x dies), so backward
does not redo im2col. Batches are split across a few Python threads (NumPy and OpenBLAS release
the GIL); OpenBLAS is held to one thread inside those regions and restored afterwards.
"""
from __future__ import annotations

import ctypes
import glob
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .base import Backend, adam_bias_corrections, dropout_hash, dropout_threshold

__all__ = ["NumpyBackend", "blas_threads"]

# GEMMs up to this many multiply-adds (M*N*K) stay on OpenBLAS's single-threaded small-matrix
# kernels, which on this kind of shape (tiny M) beat its packed path by up to 2x.
_GEMM_MNK = 1_000_000


# ---- OpenBLAS thread control (scoped; no dependency) ----------------------------------------
def _find_openblas():
    """(get, set) for the OpenBLAS NumPy links, or None (then thread limiting is skipped)."""
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
                        return get, set_
    except OSError:
        pass
    return None


_OPENBLAS = _find_openblas()
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


def _gemm_chunk(n, mnk_per_image):
    """Images per GEMM: the largest divisor of n keeping M*N*K within _GEMM_MNK."""
    cmax = max(1, _GEMM_MNK // max(1, mnk_per_image))
    for c in range(min(n, cmax), 0, -1):
        if n % c == 0:
            return c
    return 1


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
        self.c = _gemm_chunk(g.N, g.F * self.K1 * self.L)


def _view(a, shape):
    """a reshaped without a copy (raises rather than silently copying)."""
    v = a.view()
    try:
        return np.reshape(v, shape, copy=False)
    except TypeError:  # NumPy < 2.1: no copy= keyword
        v.shape = shape
        return v


def _wide_to_nchw(a, g, d):
    """View (chunks, c, F, Ho, Wo) of a wide array (chunks, F, c * L): skips junk columns."""
    s = a.itemsize
    return as_strided(a, (a.shape[0], d.c, g.F, g.Ho, g.Wo),
                      (a.strides[0], d.L * s, a.strides[1], d.Wp * s, s))


def _pool_base(g):
    """(Ho, Wo) int32: the index h * W + w of each window's top-left element (no padding)."""
    return (np.arange(g.Ho, dtype=np.int32)[:, None] * (g.sh * g.W)
            + np.arange(g.Wo, dtype=np.int32)[None, :] * g.sw)


def _plane_windows(xr, g):
    """View (P, kh, kw, Ho, Wo) of unpadded planes xr (P, H, W)."""
    sP, sH, sW = xr.strides
    return as_strided(xr, (xr.shape[0], g.kh, g.kw, g.Ho, g.Wo),
                      (sP, sH, sW, sH * g.sh, sW * g.sw), writeable=False)


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
        self._executor = None
        self._executor_pid = None
        self._lock = threading.Lock()
        self._cols_cache = {}  # id(x) -> _ColsEntry, forward -> backward
        self._local = threading.local()  # per-thread scratch buffers
        self._spare = {}  # (shape, dtype) -> column buffers free for reuse (no page faults)

    # ---- internal helpers: threads, scratch buffers, the forward->backward column cache -------
    def _run(self, fn, ranges):
        """Call fn(a, b) for each range, spread over self.threads threads (this one included)."""
        if len(ranges) <= 1 or self.threads <= 1:
            with _OneBlasThread():
                return [fn(a, b) for a, b in ranges]
        with self._lock:
            if self._executor is None or self._executor_pid != os.getpid():
                self._executor = ThreadPoolExecutor(self.threads - 1,
                                                    thread_name_prefix="gpucnn-numpy")
                self._executor_pid = os.getpid()
            pool = self._executor
        with _OneBlasThread():
            futures = [pool.submit(fn, a, b) for a, b in ranges[1:]]
            try:
                first = fn(*ranges[0])
            finally:
                for f in futures:  # never leave a worker writing into our buffers
                    f.exception()
            return [first] + [f.result() for f in futures]

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
            if len(bufs) >= 16:
                bufs.clear()
            buf = bufs[key] = (np.zeros if zero else np.empty)(shape, dtype=dtype)
        return buf

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
            spares = self._spare.setdefault(key, [])
            if len(spares) < 2 and cols.nbytes <= self.workspace_bytes:
                spares.append(cols)
            if len(self._spare) > 8:  # shapes come and go (e.g. a last, smaller batch)
                self._spare = {key: spares}

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
        return "numpy (CPU)"

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
    def _conv2d(self, x, w, b, g, relu):
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
        y = np.empty(g.y_shape, dtype=x.dtype)
        slices = self._wide_slices(g, d, x.itemsize)
        for s0, s1 in slices:
            cols = self._take_cols(((s1 - s0) // d.c, d.K1, d.c * d.L), x.dtype)
            out = self._scratch("conv_out", (cols.shape[0], g.F, cols.shape[2]), x.dtype)

            def work(a, b_, s0=s0, cols=cols, out=out):
                ca, cb = (a - s0) // d.c, (b_ - s0) // d.c
                self._im2col_wide(x, g, d, a, b_, cols[ca:cb])
                np.matmul(wext, cols[ca:cb], out=out[ca:cb])
                src = _wide_to_nchw(out[ca:cb], g, d)
                dst = y[a:b_].reshape(cb - ca, d.c, g.F, g.Ho, g.Wo)
                if relu:
                    np.maximum(src, 0, out=dst)
                else:
                    np.copyto(dst, src)

            self._run(work, [(s0 + a, s0 + b_) for a, b_ in
                             self._ranges(s1 - s0, d.c, min_units=d.c)])
            if len(slices) == 1 and self._cache_put(x, g, cols):
                continue
            self._give_cols(cols)
        return y

    def _wide_slices(self, g, d, itemsize):
        """Batch slices (multiples of the GEMM chunk) whose columns fit the workspace."""
        per_chunk = d.K1 * d.c * d.L * itemsize
        step = d.c * max(1, self.workspace_bytes // max(per_chunk, 1))
        return [(n0, min(n0 + step, g.N)) for n0 in range(0, g.N, step)]

    def _im2col_wide(self, x, g, d, a, b, cols):
        """cols[chunk, (c_in, i, j), (image, p)] for images [a, b); last row = ones."""
        n = b - a
        if g.ph or g.pw:  # copy into a zero-bordered buffer (borders are never written)
            xp = self._scratch("conv_pad", (n, g.C, d.Hp, d.Wp), x.dtype, zero=True)
            xp[:, :, g.ph:g.ph + g.H, g.pw:g.pw + g.W] = x[a:b]
        else:
            xp = x[a:b]
        sN, sC, sH, sW = xp.strides
        taps = as_strided(xp, (n // d.c, g.C, g.kh, g.kw, d.c, d.L),
                          (d.c * sN, sC, sH, sW, sN, sW), writeable=False)
        np.copyto(_view(cols[:, :g.K], (n // d.c, g.C, g.kh, g.kw, d.c, d.L)), taps)
        cols[:, g.K] = 1

    def _conv2d_backward(self, dy, x, w, g, need_dx=True, need_dw=True):
        if w.dtype != x.dtype or dy.dtype != x.dtype:
            raise TypeError(f"conv2d_backward: dtypes differ (dy {dy.dtype}, x {x.dtype}, "
                            f"w {w.dtype})")
        if not _fast_conv(g):
            return self._conv2d_backward_generic(dy, x, w, g, need_dx, need_dw)
        d = _WideDims(g)
        dt = x.dtype
        slices = self._wide_slices(g, d, x.itemsize)
        cached = self._cache_take(x, g) if len(slices) == 1 else None
        if not (need_dx or need_dw):
            if cached is not None:
                self._give_cols(cached)
            return None, None, None
        # dx: rows of W^T in tap-major order (i, j, c_in), so that each tap's block of the
        # GEMM result is laid out [c_in, image, padded plane] like the channel-major dx.
        wT = (np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(g.K, g.F)) if need_dx
              else None)
        S = d.Hp * d.Wp
        dx = np.empty(g.x_shape, dtype=dt) if need_dx else None
        dwT = np.zeros((d.K1, g.F), dtype=dt) if need_dw else None
        for s0, s1 in slices:
            ns, nch = s1 - s0, (s1 - s0) // d.c
            cols = None
            if need_dw:
                cols = (cached if cached is not None
                        else self._take_cols((nch, d.K1, d.c * d.L), dt))
                dyw = self._scratch("conv_dyw", (nch, g.F, d.c * d.L), dt, zero=True)
            if need_dx:
                dyS = self._scratch("conv_dyS", (g.F, ns, S), dt, zero=True)
                dcS = self._scratch("conv_dcS", (g.K, ns * S), dt)
                dxS = self._scratch("conv_dxS", (g.C, ns * S), dt)

            def work(a, b, s0=s0, cols=cols):
                part = None
                if need_dw:
                    ca, cb = (a - s0) // d.c, (b - s0) // d.c
                    # dy into the wide layout; junk columns stay zero (never written).
                    np.copyto(_wide_to_nchw(dyw[ca:cb], g, d),
                              dy[a:b].reshape(cb - ca, d.c, g.F, g.Ho, g.Wo))
                    if cached is None:
                        self._im2col_wide(x, g, d, a, b, cols[ca:cb])
                    part = np.matmul(cols[ca:cb], dyw[ca:cb].transpose(0, 2, 1)).sum(axis=0)
                if need_dx:
                    self._conv_dx(dy, wT, g, d, a - s0, b - s0, s0, dyS, dcS, dxS, dx)
                return part

            parts = self._run(work, [(s0 + a, s0 + b) for a, b in
                                     self._ranges(ns, d.c, min_units=d.c)])
            if need_dw:
                for part in parts:
                    dwT += part
            if cols is not None:
                self._give_cols(cols)
        if not need_dw:
            return dx, None, None
        dw = np.ascontiguousarray(dwT[:g.K].T).reshape(w.shape)
        return dx, dw, dwT[g.K].copy()

    @staticmethod
    def _conv_dx(dy, wT, g, d, a, b, s0, dyS, dcS, dxS, dx):
        """dx for images [s0 + a, s0 + b) of the slice, in the channel-major padded-plane
        layout (C, n, Hp * Wp): dcols = W^T @ dy (dy zero outside valid output positions),
        then each tap adds its whole (C, n * plane) block, shifted by i * Wp + j, in one call
        (C long rows instead of N * C * kh * kw short ones). A shifted block would run past
        its last plane only with zeros (outputs end L <= plane - shift into the plane), so
        the tail is dropped and ranges of different threads never touch."""
        S = d.Hp * d.Wp
        lo, hi = a * S, b * S
        n = b - a
        # dy -> (F, image, plane) with zeros at junk positions (never written).
        dst = as_strided(dyS[:, a:], (g.F, n, g.Ho, g.Wo),
                         (dyS.strides[0], dyS.strides[1], d.Wp * dyS.itemsize, dyS.itemsize))
        np.copyto(dst, dy[s0 + a:s0 + b].transpose(1, 0, 2, 3))
        np.matmul(wT, dyS.reshape(g.F, -1)[:, lo:hi], out=dcS[:, lo:hi])
        out = dxS[:, lo:hi]
        out.fill(0)
        for i in range(g.kh):
            for j in range(g.kw):
                off = i * d.Wp + j
                t = (i * g.kw + j) * g.C
                blk = out[:, off:]
                np.add(blk, dcS[t:t + g.C, lo:hi - off], out=blk)
        planes = out.reshape(g.C, n, d.Hp, d.Wp)[:, :, g.ph:g.ph + g.H, g.pw:g.pw + g.W]
        dx[s0 + a:s0 + b] = planes.transpose(1, 0, 2, 3)

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
        P, kk = g.N * g.C, g.kh * g.kw
        xr = x.reshape(P, g.H, g.W)
        y = np.empty(g.y_shape, dtype=x.dtype)
        sw = np.empty(g.y_shape, dtype=np.int32)
        yr, swr = y.reshape(P, g.Ho, g.Wo), sw.reshape(P, g.Ho, g.Wo)
        base = _pool_base(g)
        cdt = np.uint8 if kk < 256 else np.int32

        def work(a, b):
            view = _plane_windows(xr[a:b], g)
            taps = [view[:, i, j] for i in range(g.kh) for j in range(g.kw)]
            ys = yr[a:b]
            if kk == 1:
                np.copyto(ys, taps[0])
            else:
                np.maximum(taps[0], taps[1], out=ys)
                for t in taps[2:]:
                    np.maximum(ys, t, out=ys)
            if np.isnan(ys).any():
                return False
            out = swr[a:b]
            if kk == 1:
                out[...] = base
                return True
            notyet = np.not_equal(taps[0], ys)  # no maximum among the taps seen so far
            count = notyet.astype(cdt)
            ne = np.empty_like(notyet)
            for t in taps[1:-1]:
                np.not_equal(t, ys, out=ne)
                notyet &= ne
                count += notyet  # -> index of the first tap equal to the max
            if g.kw == 1:
                np.multiply(count, g.W, out=out, casting="unsafe")
            elif g.kw == 2:
                np.multiply(count >> 1, g.W, out=out, casting="unsafe")
                out += count & 1
            else:
                i, j = np.divmod(count, cdt(g.kw))
                np.multiply(i, g.W, out=out, casting="unsafe")
                out += j
            out += base
            return True

        if all(self._run(work, self._ranges(P, min_units=max(1, 8192 // (g.Ho * g.Wo))))):
            return y, sw
        return self._max_pool2d_generic(x, g)

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
            dx = np.empty(g.x_shape, dtype=dy.dtype)
            flat, swr, dyr = dx.reshape(-1), switches.reshape(P, per), dy.reshape(P, per)

            def work(a, b):
                flat[a * plane:b * plane] = 0
                idx = swr[a:b] + (np.arange(a, b, dtype=np.intp) * plane)[:, None]
                flat[idx.reshape(-1)] = dyr[a:b].reshape(-1)

            self._run(work, self._ranges(P, min_units=max(1, 8192 // per)))
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
        dx = np.empty(dy.shape, dtype=dy.dtype)
        yf, dyf, dxf = y.reshape(-1), dy.reshape(-1).view(it), dx.reshape(-1).view(it)

        def work(a, b):
            mask = np.negative(np.greater(yf[a:b], 0).view(np.int8), dtype=it)
            np.bitwise_and(dyf[a:b], mask, out=dxf[a:b])

        self._run(work, self._ranges(dy.size, 4096, min_units=16))
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

        self._run(work, self._linear_ranges(x.shape[0], w.size))
        return y

    def _linear_ranges(self, n, wsize):
        """Row ranges for a (n x in) @ (in x out) GEMM: split only when it is worth it."""
        return self._ranges(n, 8, min_units=1) if n * wsize >= 4_000_000 else [(0, n)]

    def _linear_backward(self, dy, x, w):
        n = x.shape[0]
        dx = np.empty(x.shape, dtype=x.dtype)
        dw = np.empty(w.shape, dtype=x.dtype)

        def work_dx(a, b):
            np.matmul(dy[a:b], w, out=dx[a:b])

        def work_dw(a, b):  # rows of dw = output features
            np.matmul(dy[:, a:b].T, x, out=dw[a:b])

        big = n * w.size >= 4_000_000
        self._run(work_dx, self._ranges(n, 8) if big else [(0, n)])
        self._run(work_dw, self._ranges(w.shape[0], 8) if big else [(0, w.shape[0])])
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
