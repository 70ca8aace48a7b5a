"""The tuned CPU max-pool (the ``numpy`` backend's).

Forward over plain windows (no padding, dilation or ceil_mode overhang: ``PoolGeom.plain``,
which LeNet's and AlexNet's pools are): the window max is a tree of np.maximum over the taps
(gathered into contiguous blocks first), the switch the first tap equal to it (= the strict
'>' fold of the reference, ties to the first in row-major order); a window holding a NaN
(whose result is that NaN, PyTorch's rule, with the last NaN as switch) and every other
geometry send the call to the reference. Backward with non-overlapping windows is a
scatter, with overlapping ones a bincount (which sums duplicates in index order:
deterministic). Average and LP pooling have no tuned path (the backend runs the reference).
Tested against ``reference.py`` in ``tests/ops/test_pool.py``.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ...cpu import MIN_SPLIT
from . import check_switches, reference

__all__ = ["max_pool2d", "max_pool2d_backward", "pool_taps"]


def _pool_base(g):
    """(Ho, Wo) int32: the index h * W + w of each window's top-left element (no padding)."""
    return (np.arange(g.Ho, dtype=np.int32)[:, None] * (g.sh * g.W)
            + np.arange(g.Wo, dtype=np.int32)[None, :] * g.sw)


def _plane_windows(xr, g):
    """View (P, kh, kw, Ho, Wo) of unpadded planes xr (P, H, W)."""
    sP, sH, sW = xr.strides
    return as_strided(xr, (xr.shape[0], g.kh, g.kw, g.Ho, g.Wo),
                      (sP, sH, sW, sH * g.sh, sW * g.sw), writeable=False)


def max_pool2d(rt, x, g):
    if not g.plain:
        return reference.max_pool2d(x, g)
    # Plain windows: the window max by a tree of np.maximum (exact), then the switch is the
    # first tap (row-major) equal to it: the same as a strict '>' fold, ties included.
    # np.maximum propagates a NaN but the "first tap equal to it" switch cannot find it: with
    # a NaN anywhere the reference's fold (which lets the last NaN win) runs instead.
    P, plane = g.N * g.C, g.H * g.W
    xr = x.reshape(P, g.H, g.W)
    y = rt.output(g.y_shape, x.dtype)
    sw = rt.output(g.y_shape, np.int32)
    yr, swr = y.reshape(P, g.Ho, g.Wo), sw.reshape(P, g.Ho, g.Wo)

    def work(a, b):
        # One strided gather makes every tap a contiguous block; all later passes are
        # then long contiguous SIMD loops instead of short strided rows.
        taps = rt.scratch("pool_taps", (g.kh, g.kw, b - a, g.Ho, g.Wo), x.dtype)
        np.copyto(taps, _plane_windows(xr[a:b], g).transpose(1, 2, 0, 3, 4))
        return pool_taps(rt, taps, g, yr[a:b], swr[a:b])

    if all(rt.run(work, rt.ranges(P, min_units=max(1, MIN_SPLIT // plane)))):
        return y, sw
    return reference.max_pool2d(x, g)


def pool_taps(rt, taps, g, y, out):
    """Max-pool (no padding) from gathered taps (kh, kw, n, Ho, Wo): the window maxima into
    y (n, Ho, Wo) and the switches into out (n, Ho, Wo); False (results unusable: the
    caller runs the reference) if there is a NaN."""
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
    notyet = rt.scratch("pool_notyet", (m,), np.bool_)
    ne = rt.scratch("pool_ne", (m,), np.bool_)
    count = rt.scratch("pool_count", (m,), cdt)
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


def max_pool2d_backward(rt, dy, switches, g):
    check_switches(switches, g.H, g.W)
    plane = g.H * g.W
    if not g.overlapping and not (g.ph or g.pw):
        # Windows do not overlap: every input element has at most one switch pointing at
        # it (switches from max_pool2d lie in their own window), so a scatter suffices.
        P, per = g.N * g.C, g.Ho * g.Wo
        dx = rt.output(g.x_shape, dy.dtype)
        flat, swr, dyr = dx.reshape(-1), switches.reshape(P, per), dy.reshape(P, per)

        def work(a, b):
            flat[a * plane:b * plane] = 0
            idx = rt.scratch("pool_idx", (b - a, per), np.intp)
            np.add(swr[a:b], (np.arange(a, b, dtype=np.intp) * plane)[:, None], out=idx)
            flat[idx.reshape(-1)] = dyr[a:b].reshape(-1)

        rt.run(work, rt.ranges(P, min_units=max(1, MIN_SPLIT // plane)))
        return dx
    base = (np.arange(g.N * g.C, dtype=np.int64) * plane).reshape(g.N, g.C, 1, 1)
    # bincount sums duplicates in index order, so overlapping windows are deterministic.
    dx = np.bincount((base + switches).ravel(), weights=dy.ravel(),
                     minlength=g.N * g.C * plane)
    return dx.astype(dy.dtype).reshape(g.x_shape)
