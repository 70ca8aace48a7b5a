"""The plain definition of conv2d and its gradients: the oracle every fast path is tested
against. Sliding windows and einsum, any float dtype (float64 in the tests), no threads,
no caches, no layout tricks."""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["conv2d", "conv2d_backward", "windows"]


def _padded(x, g):
    return np.pad(x, ((0, 0), (0, 0), (g.ph, g.ph_end), (g.pw, g.pw_end)))


def windows(xpad, g):
    """View (N, C, Ho, Wo, kh, kw): element [n, c, ho, wo, i, j] is
    xpad[n, c, ho*sh + i*dh, wo*sw + j*dw]."""
    span = (g.dh * (g.kh - 1) + 1, g.dw * (g.kw - 1) + 1)
    v = sliding_window_view(xpad, span, axis=(2, 3))
    return v[:, :, ::g.sh, ::g.sw, ::g.dh, ::g.dw][:, :, :g.Ho, :g.Wo]


def conv2d(x, w, b, g, relu):
    """y[n, f, ho, wo] = b[f] + sum_{c, i, j} w[f, c, i, j] * xpad[n, c(f), ho*sh + i*dh, ...]."""
    win = windows(_padded(x, g), g)
    y = np.empty(g.y_shape, dtype=x.dtype)
    for gi in range(g.groups):
        cs, fs = slice(gi * g.Cg, (gi + 1) * g.Cg), slice(gi * g.Fg, (gi + 1) * g.Fg)
        y[:, fs] = np.einsum("nchwij,fcij->nfhw", win[:, cs], w[fs], optimize=True)
    if b is not None:
        y += b.astype(x.dtype)[None, :, None, None]
    return np.maximum(y, 0) if relu else y


def conv2d_backward(dy, x, w, g, need_dx=True, need_dw=True):
    """(dx, dw, db); a gradient not asked for is None."""
    dt = x.dtype
    dy, w = dy.astype(dt, copy=False), w.astype(dt, copy=False)
    xpad = _padded(x, g)
    dx = dw = db = None
    if need_dw:
        win = windows(xpad, g)
        dw = np.empty(g.w_shape, dtype=dt)
        for gi in range(g.groups):
            cs, fs = slice(gi * g.Cg, (gi + 1) * g.Cg), slice(gi * g.Fg, (gi + 1) * g.Fg)
            dw[fs] = np.einsum("nfhw,nchwij->fcij", dy[:, fs], win[:, cs], optimize=True)
        db = dy.sum(axis=(0, 2, 3))
    if need_dx:
        dxpad = np.zeros(xpad.shape, dtype=dt)
        for gi in range(g.groups):
            cs, fs = slice(gi * g.Cg, (gi + 1) * g.Cg), slice(gi * g.Fg, (gi + 1) * g.Fg)
            for i in range(g.kh):
                for j in range(g.kw):
                    # every output position's tap (i, j) reads one input element: give back
                    hs = slice(i * g.dh, i * g.dh + g.sh * (g.Ho - 1) + 1, g.sh)
                    ws = slice(j * g.dw, j * g.dw + g.sw * (g.Wo - 1) + 1, g.sw)
                    dxpad[:, cs, hs, ws] += np.einsum("nfhw,fc->nchw", dy[:, fs],
                                                      w[fs, :, i, j], optimize=True)
        dx = np.ascontiguousarray(dxpad[:, :, g.ph:g.ph + g.H, g.pw:g.pw + g.W])
    return dx, dw, db
