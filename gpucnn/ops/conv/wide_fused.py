"""The tuned CPU conv + ReLU + max-pool (``Backend.conv2d_relu_maxpool``, used by Sequential
for such triples), fused on the wide-column conv path of ``wide.py``.

Forward: the pool gathers its taps (ReLU applied on the way) straight from the GEMM output
while it is in cache, so the full-size activation is never written. Backward (pool windows
not overlapping): the pooled gradient, masked where the pooled output is > 0, is scattered to
the switches directly in the wide dy buffer of the conv backward.

Each function returns None where its fast path does not apply; the backend then runs the
composition of the three ops (``base.Backend``), which is also the reference these are
tested against (``tests/ops/test_fused.py``).
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..pool import check_switches
from ..pool.cpu import pool_taps
from . import wide

__all__ = ["conv2d_relu_maxpool", "conv2d_relu_maxpool_backward"]


def conv2d_relu_maxpool(rt, x, w, b, g, pg):
    """(y, switches), or None (not on the fast path, or a NaN reached the pool). The pool
    reads its windows straight from the conv output, so they must be plain (``pg.plain``).
    ReLU keeps a NaN (np.maximum propagates it, as torch.relu does), so pool_taps sees it and
    gives up; the composed ops then let the NaN win its window (ops/pool/reference.py)."""
    if not (wide.fast_conv(g) and pg.plain) or w.dtype != x.dtype:
        return None
    y = rt.output(pg.y_shape, x.dtype)
    sw = rt.output(pg.y_shape, np.int32)
    yr, swr = y.reshape(g.N * g.F, pg.Ho, pg.Wo), sw.reshape(g.N * g.F, pg.Ho, pg.Wo)

    def epilogue(src, a, b_):
        # src (chunks, c, F, Ho, Wo) -> pool windows (chunks, c, F, kh, kw, Hp, Wp)
        s0, s1, s2, s3, s4 = src.strides
        win = as_strided(src, src.shape[:3] + (pg.kh, pg.kw, pg.Ho, pg.Wo),
                         (s0, s1, s2, s3, s4, s3 * pg.sh, s4 * pg.sw), writeable=False)
        n = b_ - a
        taps = rt.scratch("fused_taps", (pg.kh, pg.kw) + src.shape[:3] + (pg.Ho, pg.Wo),
                          x.dtype)
        np.maximum(win.transpose(3, 4, 0, 1, 2, 5, 6), 0, out=taps)  # ReLU on the way
        return pool_taps(rt, taps.reshape(pg.kh, pg.kw, n * g.F, pg.Ho, pg.Wo), pg,
                         yr[a * g.F:b_ * g.F], swr[a * g.F:b_ * g.F])

    if all(wide.conv2d(rt, x, w, b, g, True, epilogue=epilogue)):
        return y, sw
    return None


def conv2d_relu_maxpool_backward(rt, dy, switches, y, x, w, g, pg, need_dx, need_dw):
    """(dx, dw, db), or None where the pool windows overlap or are not plain."""
    if not (wide.fast_conv(g) and pg.plain and not pg.overlapping):
        return None
    check_switches(switches, g.Ho, g.Wo)
    dt = x.dtype
    dy, y = dy.astype(dt, copy=False), y.astype(dt, copy=False)

    def fill_dy(d, a, b, dyw):
        _scatter_pooled(rt, dy, switches, y, g, d, a, b, dyw)

    return wide.conv2d_backward(rt, None, x, w, g, need_dx, need_dw, fill_dy=fill_dy)


def _scatter_pooled(rt, dyp, sw, yp, g, d, a, b, dyw):
    """dyw (the wide dy of images [a, b), zeroed here) = the pool + ReLU backward of the
    pooled gradient: dy at each switch where the pooled output is > 0, else 0."""
    n, per = b - a, sw[0, 0].size
    shape = (n, g.F, per)
    dyw.fill(0)
    # the wide index of each switch: a table maps h * Wo + w -> h * Wp + w, then add
    # each (image-in-block, channel) row's offset (block i // cb, slot i % cb)
    plane = np.arange(g.Ho * g.Wo, dtype=np.intp)
    table = plane + (plane // g.Wo) * (d.Wp - g.Wo)
    pos = rt.scratch("fused_pos", shape, np.intp)
    np.take(table, sw[a:b].reshape(shape), out=pos, mode="clip")  # checked: in range
    i = np.arange(n, dtype=np.intp)
    base = ((i // d.cb)[:, None] * g.F + np.arange(g.F, dtype=np.intp)[None, :]) * d.cb
    pos += ((base + (i % d.cb)[:, None]) * d.L)[:, :, None]
    # values: dy where the pooled output is > 0, else +0 (the branch-free bitwise select of
    # ops/activation.relu_backward_select)
    it = np.int32 if dyw.itemsize == 4 else np.int64
    keep = rt.scratch("fused_keep", shape, np.bool_)
    mask = rt.scratch("fused_mask", shape, it)
    vals = rt.scratch("fused_vals", shape, dyw.dtype)
    np.greater(yp[a:b].reshape(shape), 0, out=keep)
    np.negative(keep.view(np.int8), out=mask)  # 0 or all ones
    np.bitwise_and(dyp[a:b].reshape(shape).view(it), mask, out=vals.view(it))
    dyw.reshape(-1)[pos.reshape(-1)] = vals.reshape(-1)
