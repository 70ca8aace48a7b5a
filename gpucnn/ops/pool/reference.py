"""The plain definitions of max, average and LP pooling and their gradients: the oracle every
fast path is tested against. Loops over the window taps (each one gathered for all windows at
once), any float dtype, no threads or caches.

Tap ``(a, b)`` of window ``(i, j)`` reads input row ``i * sh - ph + a * dh`` and column
``j * sw - pw + b * dw``; taps outside the input are padding: they never win a max and add
nothing to a sum (the divisors say how much padding counts).
"""
from __future__ import annotations

import numpy as np

from . import check_switches

__all__ = ["max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
           "lp_pool2d", "lp_pool2d_backward", "window_sum", "window_sum_backward",
           "divisors"]


def _axis_taps(n, k, s, p, d, size):
    """For each tap t of an axis: (the windows in which it lies inside the input, the input
    positions it reads there), as slices: both are arithmetic progressions."""
    for t in range(k):
        pos = np.arange(n) * s - p + t * d
        i = np.flatnonzero((pos >= 0) & (pos < size))
        if i.size == 0:
            yield slice(0, 0), slice(0, 0)
        else:
            yield slice(i[0], i[-1] + 1), slice(pos[i[0]], pos[i[-1]] + 1, s)


def _taps(g):
    """For each tap (a, b) in row-major order: (index of the windows' block, index of the
    input block it reads). One tap of distinct windows reads distinct inputs, so ``+=``
    through these never collides."""
    rows = list(_axis_taps(g.Ho, g.kh, g.sh, g.ph, g.dh, g.H))
    cols = list(_axis_taps(g.Wo, g.kw, g.sw, g.pw, g.dw, g.W))
    for out_h, in_h in rows:
        for out_w, in_w in cols:
            yield (..., out_h, out_w), (..., in_h, in_w)


def max_pool2d(x, g):
    """(y, switches): the maximum of each window's taps inside the input and its index
    h * W + w, by PyTorch's fold in row-major tap order: a tap takes over when it is
    strictly greater (ties keep the first maximum) or NaN (a NaN anywhere in the window is
    the result, and the last NaN its switch)."""
    best = np.zeros(g.y_shape, dtype=x.dtype)
    arg = np.full(g.y_shape, -1, dtype=np.int64)
    plane_index = np.arange(g.H * g.W).reshape(g.H, g.W)  # h * W + w
    for out, inp in _taps(g):
        v, cur, cur_arg = x[inp], best[out], arg[out]
        take = (cur_arg < 0) | (v > cur) | np.isnan(v)
        best[out] = np.where(take, v, cur)
        arg[out] = np.where(take, plane_index[inp], cur_arg)
    return best, arg.astype(np.int32)  # pool_geometry: every window has a tap inside


def max_pool2d_backward(dy, switches, g):
    """dx: each window's gradient added at its switch (np.add.at: repeated switches, from
    overlapping windows, accumulate)."""
    check_switches(switches, g.H, g.W)
    plane = g.H * g.W
    dx = np.zeros((g.N * g.C, plane), dtype=dy.dtype)
    rows = np.arange(g.N * g.C)[:, None]
    np.add.at(dx, (rows, switches.reshape(g.N * g.C, -1)), dy.reshape(g.N * g.C, -1))
    return dx.reshape(g.x_shape)


def window_sum(x, g):
    """(N, C, Ho, Wo): the sum of each window's taps inside the input."""
    s = np.zeros(g.y_shape, dtype=x.dtype)
    for out, inp in _taps(g):
        s[out] += x[inp]
    return s


def window_sum_backward(dy, g):
    """The adjoint of :func:`window_sum`: every input element gets the sum of dy over the
    windows it lies in."""
    dx = np.zeros(g.x_shape, dtype=dy.dtype)
    for out, inp in _taps(g):
        dx[inp] += dy[out]
    return dx


def divisors(g):
    """(Ho, Wo): PyTorch's average-pool divisor of each window. ``count_include_pad``: the
    window clipped to the padded input (so a ceil_mode window reaching past the right
    padding divides by less than kh * kw); else the taps inside the input."""
    if g.divisor_override is not None:
        return np.full((g.Ho, g.Wo), g.divisor_override)

    def extent(n, k, s, p, size):
        start = np.arange(n) * s - p
        if g.count_include_pad:
            return np.minimum(start + k, size + p) - start
        return np.minimum(start + k, size) - np.maximum(start, 0)

    return (extent(g.Ho, g.kh, g.sh, g.ph, g.H)[:, None]
            * extent(g.Wo, g.kw, g.sw, g.pw, g.W)[None, :])


def avg_pool2d(x, g):
    return (window_sum(x, g) / divisors(g)).astype(x.dtype)


def avg_pool2d_backward(dy, g):
    return window_sum_backward((dy / divisors(g)).astype(dy.dtype), g)


def lp_pool2d(x, p, g):
    """PyTorch's ``F.lp_pool2d``, as it computes it: (avg_pool2d(x^p) * kh * kw)^(1/p), with
    the average's divisor clipped at the edge (no padding), so a ceil_mode partial window of
    n taps gives (sum * kh * kw / n)^(1/p). No abs: x^p of a negative x is NaN for a
    non-integer p, and a negative sum's non-integer root is NaN."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return ((avg_pool2d(x ** p, g) * (g.kh * g.kw)) ** (1 / p)).astype(x.dtype)


def lp_pool2d_backward(dy, x, y, p, g):
    """dx_j = x_j^(p-1) * G_j, G_j = the sum over the windows containing j of dy * y / S,
    S the window's sum of x^p (the kh * kw / divisor scale cancels). Convention: a window
    whose sum S is 0 passes no gradient, and dx_j = 0 where G_j = 0 (even where x_j^(p-1) is
    infinite, x_j = 0 with p < 1)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        s = window_sum(x ** p, g)
        r = np.where(s != 0, dy * y / s, 0).astype(dy.dtype)
        grad = window_sum_backward(r, g)
        return np.where(grad != 0, grad * x ** (p - 1), 0).astype(dy.dtype)
