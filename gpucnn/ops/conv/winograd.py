"""Winograd minimal-filtering convolution F(m x m, r x r) for the CPU (stride 1, dilation 1,
one group): fewer multiplications than the direct convolution, at the price of transforms.

Each output tile of m x m pixels comes from an input tile of t x t = (m + r - 1)^2 pixels:

    Y = A^T [ (G g G^T) (.) (B^T d B) ] A        (Lavin & Gray 2015, "Fast Algorithms for
                                                  Convolutional Neural Networks")

Summed over input channels, the element-wise product becomes t^2 independent GEMMs
``M[xi] = U[xi] (F x C) @ V[xi] (C x tiles)``: ``t^2 / m^2`` multiplications per output and
channel pair instead of ``r^2`` (F(2x2,3x3): 2.25x fewer; F(4x4,3x3): 4x; F(2x2,5x5): 2.8x),
less what partial tiles at the border waste. Everything else is GEMM-shaped too, so it all
runs on OpenBLAS: the input transform is ONE GEMM ``kron(B^T, B^T) (t^2 x t^2) @ D (t^2 x
C*tiles)`` on the gathered tiles D (the only copy, t^2/m^2 times the input instead of
im2col's r^2), the weight transform is one GEMM ``kron(G, G) @ w``, and the output
transform is one GEMM ``kron(A^T, A^T) (m^2 x t^2) @ M``, followed by one strided pass that
crops partial tiles and adds the bias (+ ReLU).

The matrices come from :func:`transforms` (Cook-Toom: evaluation at the points 0, 1, -1, 2,
-2, ... and infinity, interpolation by the inverse Vandermonde matrix, in exact rational
arithmetic; the fractions moved into G so B^T and A^T are integer and exact on the data).

dx of a stride-1 convolution is a stride-1 convolution of dy with the flipped, transposed
filters and padding ``r - 1 - p``, so it runs through the same code. dW is Winograd too, with
the roles swapped: F(r x r, m x m) takes each m x m tile of dy as the filter and the t x t
input tile under it as the signal (their valid correlation is that tile's r x r share of
dW), and sums the element-wise products over all tiles in the transformed domain (t^2 GEMMs
with the tiles as K), so only one output transform runs per filter pair.

Non-finite values: the transforms mix all of a tile's values, so an inf or NaN in the input
(or dy) makes every output (or dW tap) of the tiles it lies in non-finite, where the direct
definition spoils only the outputs that read it.

Rounding: the transforms add terms of growing magnitude (points +-2 scale by up to 2^4 in
F(4x4,3x3)), so the float32 error grows with m: tests/ops/test_conv_winograd.py states and
checks the bounds of each variant against the float64 reference.
"""
from __future__ import annotations

from fractions import Fraction
from functools import lru_cache

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import wide

__all__ = ["VARIANTS", "transforms", "supports", "preferred", "workspace_bytes", "conv2d",
           "conv2d_backward", "weight_grad", "weight_grad_bytes"]

# name: (m, supported kernel sizes r). F(4x4, 5x5) would need t = 8 points (+-1/2): too
# inaccurate in float32 to be worth it.
VARIANTS = {"winograd_f2": (2, (3, 5)), "winograd_f4": (4, (3,))}
_POINTS = (Fraction(0), Fraction(1), Fraction(-1), Fraction(2), Fraction(-2), Fraction(1, 2),
           Fraction(-1, 2))
_CHUNK_IMAGES = 32  # images per transform/GEMM block: bounds the workspace
# dW's blocks: the tile count is its GEMMs' K (32 -> 64 images: conv3 60 -> 45 ms), as long
# as a block's buffers fit in the workspace bound (GPUCNN_WORKSPACE_MB)
_DW_CHUNK_IMAGES = 64


@lru_cache(maxsize=None)
def transforms(m, r):
    """(AT (m x t), G (t x r), BT (t x t)) of F(m, r) as float64 arrays, t = m + r - 1.
    1-D: ``y = AT @ ((G @ g) * (BT @ d))`` is the correlation ``y[i] = sum_k g[k] d[i + k]``
    (i < m) of a length-t signal d with a length-r filter g."""
    t = m + r - 1
    pts = _POINTS[:t - 1]  # plus the point at infinity (its row picks the top coefficient)

    def evaluation(n_coef):  # rows: value at each point, then the leading coefficient
        rows = [[p ** k for k in range(n_coef)] for p in pts]
        return rows + [[Fraction(int(k == n_coef - 1)) for k in range(n_coef)]]

    V = evaluation(t)
    C = _inverse(V)                      # interpolation: coefficients from values
    BT = [list(col) for col in zip(*C)]  # C^T (t x t)
    G = evaluation(r)                    # t x r
    A_eval = evaluation(m)               # t x m
    # move each row's denominators of BT into G's row: BT integer, exact on the data
    for j in range(t):
        den = 1
        for v in BT[j]:
            den = den * v.denominator // np.gcd(den, v.denominator)
        BT[j] = [v * den for v in BT[j]]
        G[j] = [v / den for v in G[j]]
    AT = [list(col) for col in zip(*A_eval)]  # m x t
    return tuple(np.array([[float(v) for v in row] for row in a]) for a in (AT, G, BT))


def _inverse(M):
    """Exact inverse of a square matrix of Fractions (Gauss-Jordan)."""
    n = len(M)
    A = [list(row) + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(M)]
    for c in range(n):
        p = next(i for i in range(c, n) if A[i][c] != 0)
        A[c], A[p] = A[p], A[c]
        inv = 1 / A[c][c]
        A[c] = [v * inv for v in A[c]]
        for i in range(n):
            if i != c and A[i][c] != 0:
                f = A[i][c]
                A[i] = [a - f * b for a, b in zip(A[i], A[c])]
    return [row[n:] for row in A]


def supports(name):
    """supports(g) for variant ``name``: stride 1, dilation 1, one group, square kernel of a
    supported size."""
    _, sizes = VARIANTS[name]

    def ok(g):
        return (wide.fast_conv(g) and g.kh == g.kw and g.kh in sizes)
    return ok


# Where F(4x4, 3x3) beat the wide columns on the CPU (2 Zen 4 vCPUs, OpenBLAS; forward and dx,
# README "CPU algorithms"): both channel counts >= 64 and >= 256 output tiles in the batch.
# It lost with few channels (3 -> 64: 34 vs 25 ms) or few tiles (4 x 13^2, 256 -> 256).
PREFERRED_MIN_CHANNELS = 64
PREFERRED_MIN_TILES = 256


def preferred(g):
    """The variant ``auto`` runs for geometry g on the CPU, or None (then ``wide``)."""
    if not (supports("winograd_f4")(g) and g.kh == 3):
        return None
    tiles = g.N * -(-g.Ho // 4) * -(-g.Wo // 4)
    if min(g.C, g.F) >= PREFERRED_MIN_CHANNELS and tiles >= PREFERRED_MIN_TILES:
        return "winograd_f4"
    return None


def workspace_bytes(name):
    """workspace(g, limit) of variant ``name``: float32 bytes of one image block's buffers, the
    largest of forward and dx (padded input, gathered tiles, transformed tiles, products,
    output tiles twice) and dW (padded input and dy, their tiles and transforms, the products
    and the per-thread sums); a forward or dx block is at most _CHUNK_IMAGES images whatever
    ``limit``, a dW block at most _DW_CHUNK_IMAGES images and ``limit`` bytes (one image at
    least)."""
    m = _m(name)

    def workspace(g, limit):
        r, n = g.kh, min(g.N, _CHUNK_IMAGES)
        t = m + r - 1
        sizes = []
        for cin, cout, (ho, wo) in ((g.C, g.F, (g.Ho, g.Wo)), (g.F, g.C, (g.H, g.W))):
            th, tw = -(-ho // m), -(-wo // m)
            tiles = n * th * tw
            sizes.append(cin * n * (th * m + r - 1) * (tw * m + r - 1)
                         + 2 * t * t * cin * tiles + t * t * cout * tiles
                         + 2 * m * m * cout * tiles)
        return max(4 * max(sizes), weight_grad_bytes(g, m, limit))
    return workspace


def weight_grad_bytes(g, m, limit):
    """Bytes :func:`weight_grad` allocates per thread for geometry g: a block of images'
    buffers (at most _DW_CHUNK_IMAGES images and ``limit`` bytes, one image at least), the
    block's product and the sums."""
    r, t = g.kh, m + g.kh - 1
    th, tw = -(-g.Ho // m), -(-g.Wo // m)
    Hp, Wp = th * m + r - 1, tw * m + r - 1
    n = min(g.N, _dw_chunk(g.C, g.F, Hp, Wp, th, tw, m, t, limit))
    return n * _dw_image_bytes(g.C, g.F, Hp, Wp, th, tw, m, t) + 4 * 3 * t * t * g.F * g.C


def _kron_mats(m, r, dtype):
    AT, G, BT = transforms(m, r)
    return np.kron(AT, AT).astype(dtype), np.kron(BT, BT).astype(dtype), np.kron(G, G)


def _weights(rt, w, m, dtype):
    """U (t^2, F, C) = (G g G^T) per filter pair: one GEMM kron(G, G) @ w, in the data's
    precision (G's fractions 1/4, 1/6, 1/12, 1/24 round once, like any weight), on our
    threads (rt.matmul: with OpenBLAS's own, its spinning workers left the forward that
    follows no faster on two threads than on one), into recycled buffers."""
    F, C, r, _ = w.shape
    t2 = (m + r - 1) ** 2
    _, _, GG = _kron_mats(m, r, dtype)
    wT = rt.scratch(("wino_wT", m), (r * r, F * C), dtype)
    np.copyto(wT, np.asarray(w).reshape(F * C, r * r).T)
    U = rt.scratch(("wino_U", m), (t2, F * C), dtype)
    rt.matmul(GG.astype(dtype), wT, out=U)
    return U.reshape(t2, F, C)


def _gather_tiles(rt, key, src, top_left, plane, size, m, tiles):
    """D (size^2, ch * tiles * n): the size x size tiles m apart (th x tw of them) of images
    ``src`` (n, ch, h, w) placed at ``top_left`` in zeroed planes of ``plane`` = (Hp, Wp).
    The planes are image-minor (ch, Hp, Wp, n): every gathered tile row is n contiguous
    floats (NCHW would give runs of tw), so D's columns come out (ch, tile, image)."""
    n, ch, h, w = src.shape
    (top, left), (th, tw) = top_left, tiles
    xp = rt.scratch(key + ("pad", n), (ch, *plane, n), src.dtype, zero=True)
    xp[:, top:top + h, left:left + w, :] = src.transpose(1, 2, 3, 0)
    sC, sH, sW, sN = xp.strides
    D = rt.scratch(key + ("D", n), (size * size, ch * th * tw * n), src.dtype)
    np.copyto(D.reshape(size, size, ch, th, tw, n),
              as_strided(xp, (size, size, ch, th, tw, n), (sH, sW, sC, m * sH, m * sW, sN),
                         writeable=False))
    return D


def _forward(rt, x, U, b, m, r, pads, relu, out_shape):
    """Correlation of x (N, C, H, W) with the transformed filters U (t^2, F, C), zero
    padding ``pads = (top, left, bottom, right)``, into a new (N, F, Ho, Wo) array."""
    N, C, H, W = x.shape
    F = U.shape[1]
    Ho, Wo = out_shape
    t = m + r - 1
    th, tw = -(-Ho // m), -(-Wo // m)
    Hp, Wp = th * m + r - 1, tw * m + r - 1  # every tile whole (extra zeros cropped later)
    AA, BB, _ = _kron_mats(m, r, x.dtype)
    y = rt.output((N, F, Ho, Wo), x.dtype)
    bias = None if b is None else np.asarray(b, dtype=x.dtype).reshape(F, 1, 1, 1)
    key = ("wino", N, C, H, W, F, m, r, pads)

    def block(a, e):
        n = e - a
        P = th * tw * n
        D = _gather_tiles(rt, key, x[a:e], pads[:2], (Hp, Wp), t, m, (th, tw))
        V = rt.scratch(key + ("V", n), (t * t, C, P), x.dtype)
        np.matmul(BB, D, out=V.reshape(t * t, -1))
        M = rt.scratch(key + ("M", n), (t * t, F, P), x.dtype)
        np.matmul(U, V, out=M)
        Y = rt.scratch(key + ("Y", n), (m * m, F * P), x.dtype)
        np.matmul(AA, M.reshape(t * t, -1), out=Y)
        # Y[(i, j), f, ti, tj, image] -> whole tiles yp[image, f, ti*m + i, tj*m + j]
        yp = rt.scratch(key + ("yp", n), (n, F, th * m, tw * m), x.dtype)
        s0, s1, s2, s3 = yp.strides
        np.copyto(as_strided(yp, (n, F, th, m, tw, m), (s0, s1, m * s2, s2, m * s3, s3)),
                  Y.reshape(m, m, F, th, tw, n).transpose(5, 2, 3, 0, 4, 1))
        src, dst = yp[:, :, :Ho, :Wo], y[a:e]  # partial tiles cut
        if bias is not None:
            np.add(src, bias.reshape(1, F, 1, 1), out=dst)
            src = dst
        if relu:
            np.maximum(src, 0, out=dst)
        elif src is not dst:
            np.copyto(dst, src)

    def work(a, e):
        for s in range(a, e, _CHUNK_IMAGES):
            block(s, min(e, s + _CHUNK_IMAGES))

    rt.run(work, rt.ranges(N))
    return y


def _dw_image_bytes(C, F, Hp, Wp, th, tw, m, t, itemsize=4):
    """Bytes of weight_grad's block buffers per image (padded x and dy, their tiles and
    transforms)."""
    tiles = th * tw
    return itemsize * (C * Hp * Wp + 2 * t * t * C * tiles + F * th * m * tw * m
                       + m * m * F * tiles + t * t * F * tiles)


def _dw_chunk(C, F, Hp, Wp, th, tw, m, t, limit, itemsize=4):
    """Images per weight_grad block: up to _DW_CHUNK_IMAGES, within the workspace bound."""
    per_image = _dw_image_bytes(C, F, Hp, Wp, th, tw, m, t, itemsize)
    return max(1, min(_DW_CHUNK_IMAGES, int(limit) // per_image))


def weight_grad(rt, dy, x, m, r, pads):
    """(dW (F, C, r, r), db) of the correlation with padding ``pads``: Winograd F(r x r,
    m x m) with each m x m tile of dy as the "filter" and the t x t tile of input under it as
    the signal (dW of one tile is their valid correlation, r x r), summed over tiles in the
    transformed domain: ``M[xi] = sum over tiles of U[xi] (F x tiles) @ V[xi]^T (tiles x C)``,
    then ``dW = kron(A^T, A^T) @ M``. t^2 / m^2 multiplications per tile position instead of
    r^2 (F(3x3, 2x2): 1.7x fewer on 7x7 planes, F(3x3, 4x4): 3x)."""
    N, C, H, W = x.shape
    F, Ho, Wo = dy.shape[1:]
    t = m + r - 1
    th, tw = -(-Ho // m), -(-Wo // m)
    Hp, Wp = th * m + r - 1, tw * m + r - 1
    AT, G, BT = transforms(r, m)  # output r (the filter taps), filter m (the dy tile)
    dt = x.dtype
    AA, BB, GG = (np.kron(a, a).astype(dt) for a in (AT, BT, G))
    key = ("wino_dw", N, C, H, W, F, m, r, pads)

    def block(a, e, M):
        n = e - a
        P = th * tw * n
        D = _gather_tiles(rt, key + ("x",), x[a:e], pads[:2], (Hp, Wp), t, m, (th, tw))
        V = rt.scratch(key + ("V", n), (t * t, C, P), dt)
        np.matmul(BB, D, out=V.reshape(t * t, -1))
        Dg = _gather_tiles(rt, key + ("dy",), dy[a:e], (0, 0), (th * m, tw * m), m, m, (th, tw))
        U = rt.scratch(key + ("U", n), (t * t, F, P), dt)
        np.matmul(GG, Dg, out=U.reshape(t * t, -1))
        part = rt.scratch(key + ("part", n), (t * t, F, C), dt)
        np.matmul(U, V.transpose(0, 2, 1), out=part)
        M += part

    chunk = _dw_chunk(C, F, Hp, Wp, th, tw, m, t, rt.workspace_bytes, dt.itemsize)

    def work(a, e):
        M = np.zeros((t * t, F, C), dt)
        for s in range(a, e, chunk):
            block(s, min(e, s + chunk), M)
        return M

    parts = rt.run(work, rt.ranges(N))
    M = parts[0]
    for p in parts[1:]:  # in range order: the result depends only on the thread count
        M += p
    dw = rt.matmul(AA, M.reshape(t * t, F * C)).reshape(r, r, F, C).transpose(2, 3, 0, 1)
    return np.ascontiguousarray(dw), dy.sum(axis=(0, 2, 3))


def _m(name):
    return VARIANTS[name][0]


def conv2d(name):
    """The forward of variant ``name``: ``forward(rt, x, w, b, g, relu) -> y``."""
    def forward(rt, x, w, b, g, relu):
        if w.dtype != x.dtype:
            raise TypeError(f"conv2d: w dtype {w.dtype} differs from x dtype {x.dtype}")
        U = _weights(rt, w, _m(name), x.dtype)
        return _forward(rt, x, U, b, _m(name), g.kh, (g.ph, g.pw, g.ph_end, g.pw_end), relu,
                        (g.Ho, g.Wo))
    return forward


def conv2d_backward(name):
    """The backward of variant ``name``: dx by Winograd (the flipped, transposed filters,
    padding r - 1 - p), dW by Winograd F(r x r, m x m) (:func:`weight_grad`)."""
    def backward(rt, dy, x, w, g, need_dx=True, need_dw=True):
        dt = x.dtype
        dx = dw = db = None
        if need_dw:
            dw, db = weight_grad(rt, np.asarray(dy, dtype=dt), x, _m(name), g.kh,
                                  (g.ph, g.pw, g.ph_end, g.pw_end))
        if need_dx:
            dy = np.ascontiguousarray(dy, dtype=dt)
            wT = np.ascontiguousarray(w.astype(dt, copy=False).transpose(1, 0, 2, 3)[:, :, ::-1,
                                                                                    ::-1])
            r = g.kh
            U = _weights(rt, wT, _m(name), dt)
            pads = (r - 1 - g.ph, r - 1 - g.pw, r - 1 - g.ph_end, r - 1 - g.pw_end)
            if min(pads) < 0:  # padding > r - 1: the plain im2col adjoint
                dx, _, _ = wide._conv2d_backward_im2col(rt, dy, x, w, g, True, False)
            else:
                dx = _forward(rt, dy, U, None, _m(name), r, pads, False, (g.H, g.W))
        return dx, dw, db
    return backward
