"""The tuned CPU convolution (the ``numpy`` backend's): im2col + GEMM on NumPy/OpenBLAS.

The general path (any stride, dilation, groups) builds a channel-major column matrix
``cols[(c, i, j), (n, ho, wo)]`` so a conv is a single ``W(F, K) @ cols(K, n*Ho*Wo)``; its
workspace is bounded by ``rt.workspace_bytes``.

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
(``rt.cache_put``/``rt.cache_take``).

Both paths pad top/left by ``ph``/``pw`` and bottom/right by ``ph_end``/``pw_end`` (they
differ only for ``padding='same'`` with an even span), so the padded plane is
``(H + ph + ph_end) x (W + pw + pw_end)``.

Every function takes the backend's :class:`gpucnn.cpu.CpuRuntime` ``rt`` first (threads and
buffers); checked arrays and a :class:`~gpucnn.ops.conv.ConvGeom` come from the backend.
Tested against ``reference.py`` in ``tests/ops/test_conv.py``.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

__all__ = ["conv2d", "conv2d_backward", "fast_conv"]

# GEMMs up to this many multiply-adds (M*N*K) stay on OpenBLAS's single-threaded small-matrix
# kernels, which on this kind of shape (tiny M) beat its packed path by up to 2x.
_GEMM_MNK = 1_000_000
# Column bytes of one storage chunk of a large layer (see _WideDims).
_BLOCK_BYTES = 16 << 20
# Column bytes of one streamed block (_stream_block): 1, 4 and 16 MiB measured, 4 fastest.
_STREAM_BYTES = 4 << 20
# A forward keeps its column matrix for the backward only up to this size (_keeps_cols).
_CACHE_BYTES = 32 << 20


def _largest_divisor(n, cmax):
    for c in range(max(1, min(n, cmax)), 0, -1):
        if n % c == 0:
            return c
    return 1


def _gemm_chunk(n, mnk_per_image):
    """Images per GEMM: the largest divisor of n keeping M*N*K within _GEMM_MNK."""
    return _largest_divisor(n, _GEMM_MNK // max(1, mnk_per_image))


def _pad_hw(x, g):
    if not (g.ph or g.pw or g.ph_end or g.pw_end):
        return x
    return np.pad(x, ((0, 0), (0, 0), (g.ph, g.ph_end), (g.pw, g.pw_end)))


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


def fast_conv(g):
    """The wide-column path applies: stride 1, dilation 1, one group."""
    return g.groups == 1 and g.sh == 1 and g.sw == 1 and g.dh == 1 and g.dw == 1


class _WideDims:
    """Sizes of the wide-column layout: padded plane Hp x Wp, L wide positions per image
    (the last output row is not padded out), K1 = K + the bias row, c images per GEMM."""

    def __init__(self, g, threads=1):
        self.Hp, self.Wp = g.H + g.ph + g.ph_end, g.W + g.pw + g.pw_end
        self.padded = (self.Hp, self.Wp) != (g.H, g.W)
        self.L = (g.Ho - 1) * self.Wp + g.Wo
        self.K1 = g.K + 1
        if g.F * self.K1 * self.L >= _GEMM_MNK:
            # One image's GEMM is already past OpenBLAS's small-matrix regime: one GEMM per
            # storage chunk, as long as its columns stay within _BLOCK_BYTES (so the blocks
            # of a layer too big to keep for its backward are streamed through the same few
            # warm buffers) and there is a chunk for every thread.
            per_image = 4 * self.K1 * self.L
            cmax = min(32, max(1, g.N // max(1, threads)), max(1, _BLOCK_BYTES // per_image))
            self.c = self.cb = _largest_divisor(g.N, cmax)
        else:
            self.c = _gemm_chunk(g.N, g.F * self.K1 * self.L)
            # Storage chunk (images per block of cols / dy): a multiple of c, so forward and
            # dx GEMMs run on c-image column blocks while dW gets one long-K GEMM per block,
            # which OpenBLAS does faster when K1 is large (LeNet conv2: 2.9 -> 1.9 ms).
            self.cb = _storage_chunk(g.N, self.c, self.K1)
        self.m = self.cb // self.c
        self.key = (g.H, g.W, g.kh, g.kw, g.ph, g.pw, self.Hp, self.Wp, self.c, self.cb)


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


def _chunks(rt, g, itemsize):
    """Batch ranges whose column matrix (K x n*Ho*Wo) fits in the workspace."""
    per_image = g.K * g.Ho * g.Wo * itemsize
    step = max(1, rt.workspace_bytes // max(per_image, 1))
    return [(n0, min(n0 + step, g.N)) for n0 in range(0, g.N, step)]


def _im2col(xpad_chunk, g, c0):
    """cols (K, n*Ho*Wo) for channels [c0, c0 + Cg) of a padded batch chunk."""
    view = _window_view(xpad_chunk[:, c0:c0 + g.Cg], g, g.dh, g.dw)
    n = xpad_chunk.shape[0]
    return view.transpose(1, 2, 3, 0, 4, 5).reshape(g.K, n * g.Ho * g.Wo)


def _col2im_add(dcols, dxpad_chunk, g, c0):
    """Scatter-add cols back into the padded gradient (the adjoint of _im2col)."""
    n = dxpad_chunk.shape[0]
    d = dcols.reshape(g.Cg, g.kh, g.kw, n, g.Ho, g.Wo)
    for i in range(g.kh):
        for j in range(g.kw):
            hs, ws = _tap_slices(g, i, j, g.dh, g.dw)
            dxpad_chunk[:, c0:c0 + g.Cg, hs, ws] += d[:, i, j].transpose(1, 0, 2, 3)


# -- the wide-column path (module docstring) --
def conv2d(rt, x, w, b, g, relu, epilogue=None):
    """epilogue(src, a, b) (fast path only), if given, replaces the write of y: src is the
    (chunks, c, F, Ho, Wo) view of images [a, b) of the GEMM output (before any ReLU) and
    the return value is the list of what it returned per thread range."""
    if w.dtype != x.dtype:
        raise TypeError(f"conv2d: w dtype {w.dtype} differs from x dtype {x.dtype}")
    if b is not None and b.dtype != x.dtype:
        b = b.astype(x.dtype)
    if not fast_conv(g):
        return _conv2d_im2col(rt, x, w, b, g, relu)
    d = _WideDims(g, rt.threads)
    wext = np.empty((g.F, d.K1), dtype=x.dtype)
    wext[:, :g.K] = w.reshape(g.F, g.K)
    wext[:, g.K] = 0 if b is None else b
    y = rt.output(g.y_shape, x.dtype) if epilogue is None else []

    def block(a, b_, cols, out):
        """Images [a, b_) (whole storage chunks) with their own cols and GEMM output."""
        k = (b_ - a) // d.cb
        _im2col_wide(rt, x, g, d, a, b_, cols)
        np.matmul(wext, _subchunks(cols, d, d.K1), out=out.reshape(k, d.m, g.F, d.c * d.L))
        src = _wide_to_nchw(out, g, d, d.c)
        if epilogue is not None:
            return epilogue(src, a, b_)
        dst = y[a:b_].reshape(k * d.m, d.c, g.F, g.Ho, g.Wo)
        if relu:
            np.maximum(src, 0, out=dst)
        else:
            np.copyto(dst, src)

    if not _keeps_cols(rt, g, d, x.itemsize):
        blk = _stream_block(g, d, x.itemsize)

        def stream(a, b_):
            done = []
            for s in range(a, b_, blk):
                e = min(b_, s + blk)
                k = (e - s) // d.cb
                cols = rt.scratch(("conv_cols", d.key), (k, d.K1, d.cb * d.L), x.dtype)
                out = rt.scratch(("conv_out", d.key), (k * d.m, g.F, d.c * d.L), x.dtype)
                done.append(block(s, e, cols, out))
            return done

        done = rt.run(stream, rt.ranges(g.N, d.cb))
        return y + [r for part in done for r in part] if epilogue is not None else y
    cols = rt.take_cols((g.N // d.cb, d.K1, d.cb * d.L), x.dtype)
    out = rt.scratch("conv_out", (g.N // d.c, g.F, d.c * d.L), x.dtype)
    done = rt.run(lambda a, b_: block(a, b_, cols[a // d.cb:b_ // d.cb],
                                      out[a // d.c:b_ // d.c]), rt.ranges(g.N, d.cb))
    if not rt.cache_put(x, g, cols):
        rt.give_cols(cols)
    return y + done if epilogue is not None else y


def _keeps_cols(rt, g, d, itemsize):
    """Whether the forward builds the whole batch's columns and keeps them for the backward
    (rt.cache_put): when they fit in _CACHE_BYTES and half the workspace. Larger layers
    are streamed, each thread through its own recycled blocks (_stream_block images at a
    time), and build their columns again in the backward: holding 43-220 MiB per layer from
    forward to backward (AlexNet-CIFAR, batch 128) cost more in page faults and memory than
    the copy (step 1.87 -> 1.27-1.43 s, peak RSS 1,341 -> 763 MiB, 2 Zen 4 vCPUs)."""
    return d.K1 * g.N * d.L * itemsize <= min(rt.workspace_bytes // 2, _CACHE_BYTES)


def _stream_block(g, d, itemsize):
    """Images per streamed block: whole storage chunks, columns within _STREAM_BYTES. One
    parallel region walks all of a thread's blocks, in its own recycled buffers; a region
    per block (a slice of one chunk per thread) woke the other thread hundreds of times per
    layer: LeNet-5 inference at batch 1000 took 50-58 ms that way, 27-32 ms now."""
    per_chunk = d.K1 * d.cb * d.L * itemsize
    return d.cb * max(1, _STREAM_BYTES // max(per_chunk, 1))


def _im2col_wide(rt, x, g, d, a, b, cols):
    """cols[chunk, (c_in, i, j), (image, p)] for images [a, b); last row = ones."""
    n = b - a
    if d.padded:  # copy into a zero-bordered buffer (borders are never written)
        xp = rt.scratch(("conv_pad", d.key), (n, g.C, d.Hp, d.Wp), x.dtype, zero=True)
        xp[:, :, g.ph:g.ph + g.H, g.pw:g.pw + g.W] = x[a:b]
    else:
        xp = x[a:b]
    sN, sC, sH, sW = xp.strides
    taps = as_strided(xp, (n // d.cb, g.C, g.kh, g.kw, d.cb, d.L),
                      (d.cb * sN, sC, sH, sW, sN, sW), writeable=False)
    np.copyto(_view(cols[:, :g.K], (n // d.cb, g.C, g.kh, g.kw, d.cb, d.L)), taps)
    cols[:, g.K] = 1


def conv2d_backward(rt, dy, x, w, g, need_dx=True, need_dw=True, fill_dy=None):
    """(dx, dw, db). ``fill_dy(d, a, b, dyw)``, if given, replaces reading ``dy``: it writes
    the wide dy of images [a, b) into ``dyw`` (junk columns zero); the fused
    conv+ReLU+pool backward scatters its pooled gradient that way."""
    if not fast_conv(g):
        return _conv2d_backward_im2col(rt, dy, x, w, g, need_dx, need_dw)
    d = _WideDims(g, rt.threads)
    dt = x.dtype
    if fill_dy is None:
        dy = dy.astype(dt, copy=False)
    w = w.astype(dt, copy=False)  # compute in x's precision
    keep = _keeps_cols(rt, g, d, x.itemsize)
    cached = rt.cache_take(x, g) if keep else None
    if not (need_dx or need_dw):
        if cached is not None:
            rt.give_cols(cached)
        return None, None, None
    # dx: rows of W^T in tap-major order (i, j, c_in): each tap's block of dcols is then
    # one (C, image, L) block.
    wT = (np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(g.K, g.F)) if need_dx
          else None)
    dx = rt.output(g.x_shape, dt) if need_dx else None
    dwT = np.zeros((d.K1, g.F), dtype=dt) if need_dw else None

    def block(a, b, cols, dyw, dcols, have_cols):
        """Images [a, b) (whole storage chunks) with their own buffers; dyw's junk columns
        are zero (zero-invariant scratch: never written there). Returns dW^T's part."""
        if fill_dy is not None:
            fill_dy(d, a, b, dyw)
        else:  # dy into the wide layout; junk columns stay zero (never written).
            np.copyto(_wide_to_nchw(dyw, g, d, d.cb),
                      dy[a:b].reshape(len(dyw), d.cb, g.F, g.Ho, g.Wo))
        part = None
        if need_dw:
            if not have_cols:
                _im2col_wide(rt, x, g, d, a, b, cols)
            part = np.matmul(cols, dyw.transpose(0, 2, 1)).sum(axis=0)
        if need_dx:
            _conv_dx(rt, wT, g, d, dyw, dcols, dx[a:b])
        return part

    def buffers(n, tag):
        k = n // d.cb
        cols = rt.scratch(("conv_cols", d.key), (k, d.K1, d.cb * d.L), dt) if need_dw else None
        dyw = rt.scratch(("conv_dyw", d.key, tag), (k, g.F, d.cb * d.L), dt, zero=True)
        dcols = (rt.scratch(("conv_dcols", tag), (n // d.c, g.K, d.c * d.L), dt) if need_dx
                 else None)
        return cols, dyw, dcols

    if keep:
        cols = None
        if need_dw:
            cols = (cached if cached is not None
                    else rt.take_cols((g.N // d.cb, d.K1, d.cb * d.L), dt))
        _, dyw, dcols = buffers(g.N, "batch")

        def work(a, b):
            return block(a, b, None if cols is None else cols[a // d.cb:b // d.cb],
                         dyw[a // d.cb:b // d.cb],
                         None if dcols is None else dcols[a // d.c:b // d.c],
                         cached is not None)
        parts = rt.run(work, rt.ranges(g.N, d.cb))
        if cols is not None:
            rt.give_cols(cols)
    else:
        blk = _stream_block(g, d, x.itemsize)

        def stream(a, b):
            total = None
            for s in range(a, b, blk):
                e = min(b, s + blk)
                part = block(s, e, *buffers(e - s, "block"), False)
                if part is not None:
                    total = part if total is None else total + part
            return total
        parts = rt.run(stream, rt.ranges(g.N, d.cb))
    if need_dw:
        for part in parts:
            if part is not None:
                dwT += part
    if not need_dw:
        return dx, None, None
    dw = np.ascontiguousarray(dwT[:g.K].T).reshape(w.shape)
    return dx, dw, dwT[g.K].copy()


def _conv_dx(rt, wT, g, d, dyw, dcols, dx):
    """dx (the images of dyw's storage chunks) = col2im(W^T @ dy) on the wide layout (the
    adjoint of _im2col_wide): small GEMMs, then kh * kw strided adds of L-long rows into
    padded planes (with NumPy's ufunc buffer made small, see gpucnn.cpu.threads.UFUNC_BUFSIZE)."""
    n, c = dx.shape[0], d.c
    np.matmul(wT, _subchunks(dyw, d, g.F), out=dcols.reshape(len(dyw), d.m, g.K, c * d.L))
    if d.padded:
        dxp = rt.scratch(("conv_dxpad", d.key), (n, g.C, d.Hp, d.Wp), dx.dtype)
    else:
        dxp = dx
    dxp.fill(0)
    sN, sC = dxp.strides[:2]
    sW = dxp.itemsize
    flat = dxp.reshape(n, g.C, d.Hp * d.Wp)
    # rows of wT are tap-major (i, j, c_in)
    src = _view(dcols, (n // c, g.kh, g.kw, g.C, c, d.L))
    for i in range(g.kh):
        for j in range(g.kw):
            dst = as_strided(flat[:, :, i * d.Wp + j:], (n // c, g.C, c, d.L),
                             (c * sN, sC, sN, sW))
            np.add(dst, src[:, i, j], out=dst)
    if dxp is not dx:
        np.copyto(dx, dxp[:, :, g.ph:g.ph + g.H, g.pw:g.pw + g.W])


# -- the general path: any stride / dilation / groups --
def _conv2d_im2col(rt, x, w, b, g, relu):
    y = np.empty(g.y_shape, dtype=x.dtype)
    xpad = _pad_hw(x, g)
    wmat = w.reshape(g.F, g.K)
    for n0, n1 in _chunks(rt, g, x.itemsize):
        for gi in range(g.groups):
            f0 = gi * g.Fg
            cols = _im2col(xpad[n0:n1], g, gi * g.Cg)
            out = rt.matmul(wmat[f0:f0 + g.Fg], cols)  # (Fg, n*Ho*Wo), channel-major
            out = out.reshape(g.Fg, n1 - n0, g.Ho, g.Wo)
            if b is not None:
                out += b[f0:f0 + g.Fg, None, None, None]
            if relu:
                np.maximum(out, 0, out=out)
            y[n0:n1, f0:f0 + g.Fg] = out.transpose(1, 0, 2, 3)
    return y


def _conv2d_backward_im2col(rt, dy, x, w, g, need_dx=True, need_dw=True):
    dt = x.dtype
    xpad = _pad_hw(x, g)
    dxpad = np.zeros(xpad.shape, dtype=dt) if need_dx else None
    wmat = w.reshape(g.F, g.K)
    dw = np.zeros((g.F, g.K), dtype=dt) if need_dw else None
    for n0, n1 in _chunks(rt, g, x.itemsize):
        n = n1 - n0
        for gi in range(g.groups):
            f0, c0 = gi * g.Fg, gi * g.Cg
            dy_g = dy[n0:n1, f0:f0 + g.Fg].transpose(1, 0, 2, 3).reshape(
                g.Fg, n * g.Ho * g.Wo)
            if need_dw:
                dw[f0:f0 + g.Fg] += rt.matmul(dy_g, _im2col(xpad[n0:n1], g, c0).T)
            if need_dx:
                _col2im_add(rt.matmul(wmat[f0:f0 + g.Fg].T, dy_g), dxpad[n0:n1], g, c0)
    dx = (np.ascontiguousarray(dxpad[:, :, g.ph:g.ph + g.H, g.pw:g.pw + g.W])
          if need_dx else None)
    if not need_dw:
        return dx, None, None
    return dx, dw.reshape(w.shape), dy.sum(axis=(0, 2, 3))
