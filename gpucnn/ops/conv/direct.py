"""The ``direct`` CPU convolution: compiled loop nests (``direct.cpp``) instead of im2col + GEMM.

For thin layers (LeNet-5: K = C*kh*kw of 25 and 150, F of 6 and 16) the GEMM route spends
more time writing and reading its column matrix, and in OpenBLAS's edge handling of a 6- or
16-row GEMM, than in arithmetic. ``direct.cpp`` keeps a block of output channels x output
positions in SIMD registers across the whole reduction and reads each tap as one unaligned
vector load of the padded input plane ("wide" positions, as in ``cpu.py``), so nothing is
copied but the padded planes themselves, one image at a time, while they are in cache.

* forward: ``conv_direct_forward`` (bias and ReLU applied on the way out, or the max-pool
  with its switches: :func:`conv2d_relu_maxpool`);
* dx: the same kernel on dy padded by ``k - 1 - p`` with the flipped, transposed filters (a
  stride-1 convolution's adjoint is one);
* dW and db: ``conv_direct_dw``, one register block of channels x taps per pass over a block
  of images that fits in L2; past ``DW_MAX_FK`` Winograd's dW (3x3, 5x5) or the wide GEMM;
* the fused backward scatters (adds) the pooled gradient straight into the planes the two
  backward kernels read.

Each thread makes ONE call for its contiguous range of images (a call per block cost a GIL
hand-off each, which made two threads slower than one); its dW partial sums are added in
range order, so a result depends only on the thread count. float32 only (float64 runs the
``wide`` path); needs padding < kernel size and a C++ compiler: :mod:`gpucnn.cpu.native`
builds the library once per machine, and without one :func:`supports` is False (``auto``
then picks ``wide``). Tested against ``reference.py`` in ``tests/ops/test_conv_direct.py``.
"""
from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import numpy as np

from ...cpu import default_threads, native
from ..pool import check_switches
from . import cpu, winograd

__all__ = ["SOURCE", "available", "unavailable_reason", "supports", "preferred", "conv2d",
           "conv2d_backward", "conv2d_relu_maxpool", "conv2d_relu_maxpool_backward",
           "workspace_bytes", "REQUIRES"]

SOURCE = Path(__file__).with_name("direct.cpp")
_ABI = 5
REQUIRES = ("stride 1, dilation 1, one group, padding smaller than the kernel, and a C++ "
            "compiler to build gpucnn/ops/conv/direct.cpp ($GPUCNN_CXX, default g++)")
# Padded planes and wide dy of the block of images a dW pass walks: L2-sized.
_BLOCK_BYTES = 256 << 10
_FB_MAX = 8  # output channels per register block (direct.cpp FB_MAX)

_state: dict = {}
_state_lock = threading.Lock()
_P, _L = ctypes.c_void_p, ctypes.c_long


class _Planes(ctypes.Structure):
    """direct.cpp ``Planes``: channel ch's element (r, c) at d0 + ch * ds + r * dr + c."""
    _fields_ = [(n, _L) for n in ("ch", "rows", "cols", "ds", "dr", "d0")]


class _Source(ctypes.Structure):
    """direct.cpp ``Source``: NCHW images, or (sw set) a pooled gradient to scatter."""
    _fields_ = [("x", _P), ("sw", _P), ("yq", _P), ("plane_q", _L)]


class _Forward(ctypes.Structure):
    _fields_ = [("in_", _Planes), ("src", _Source)] + [
        (n, _L) for n in ("kh", "kw", "F", "Ho", "Wo", "Lr")] + [
        ("w", _P), ("bias", _P), ("relu", ctypes.c_int), ("pool", _P), ("y", _P), ("sw", _P)]


class _WeightGrad(ctypes.Structure):
    _fields_ = [("in_", _Planes), ("src", _Source), ("dy", _Planes), ("dsrc", _Source)] + [
        (n, _L) for n in ("kh", "kw", "F", "Lr")]


def _lib():
    """The loaded library, or None (the reason in unavailable_reason())."""
    if "lib" not in _state:
        with _state_lock:
            if "lib" not in _state:
                lib = None
                try:
                    lib = native.load(SOURCE)
                    lib.conv_direct_abi.restype = ctypes.c_int
                    lib.conv_direct_lanes.restype = ctypes.c_int
                    if lib.conv_direct_abi() != _ABI:
                        raise native.NativeUnavailable(f"{SOURCE.name}: ABI mismatch")
                    lib.conv_direct_forward.argtypes = [_P, _L, _L, _P, _P, _P]
                    lib.conv_direct_forward.restype = None
                    lib.conv_direct_dw.argtypes = [_P, _L, _L, _L, _P, _P, _P, _P, _P]
                    lib.conv_direct_dw.restype = None
                    lib.conv_direct_fill.argtypes = [_P, _P, _L, _L, _P]
                    lib.conv_direct_fill.restype = None
                    _state["lanes"] = lib.conv_direct_lanes()
                except native.NativeUnavailable as e:
                    lib, _state["error"] = None, str(e)
                _state["lib"] = lib
    return _state["lib"]


def available():
    """Whether the native library is built and loaded here (builds it on first call)."""
    return _lib() is not None


def unavailable_reason():
    """Why :func:`available` is False, or None."""
    _lib()
    return _state.get("error")


def _pads_fit(g):
    return (0 <= g.ph < g.kh and 0 <= g.ph_end < g.kh and 0 <= g.pw < g.kw
            and 0 <= g.pw_end < g.kw)


def supports(g):
    return cpu.fast_conv(g) and _pads_fit(g) and available()


# dW by direct.cpp only up to this F x K: it keeps a block of F x K sums in registers through a
# pass over the images, and with many channels a block of images that fits in L2 is one
# image, so the passes multiply. Above it dW runs as Winograd F(r x r, m x m) for square 3x3
# (m = 4) and 5x5 (m = 2) kernels, else on the wide path's GEMM (AlexNet-CIFAR conv2, F x K
# = 307,200: direct 216, GEMM 144-164, Winograd 145 ms; LeNet-5 conv2, 2,400: direct 0.5,
# GEMM 2.1 ms; 2 Zen 4 vCPUs).
DW_MAX_FK = 1 << 15
_DW_WINOGRAD_M = {3: 4, 5: 2}


def _large_dw(rt, dy, x, w32, g):
    """(dW, db) of a layer past DW_MAX_FK."""
    m = _DW_WINOGRAD_M.get(g.kh) if g.kh == g.kw else None
    if m is None:
        _, dw, db = cpu.conv2d_backward(rt, dy, x, w32, g, need_dx=False, need_dw=True)
        return dw, db
    return winograd.weight_grad(rt, dy, x, m, g.kh, (g.ph, g.pw, g.ph_end, g.pw_end))


def preferred(g):
    """Whether ``auto`` runs ``direct`` for geometry g on the CPU (where Winograd does not):
    wherever it runs. Measured on AMD EPYC Zen 4 (2 vCPUs; README "CPU algorithms"), its
    forward and dx beat the wide GEMMs on every LeNet-5 and AlexNet layer (1.4-4x)."""
    return supports(g)


class _Layout:
    """A convolution's planes: the input padded to Hp x Wp (``planes``, plane stride S: a
    zero tail of at least one vector past each plane, which the last position block reads),
    L useful wide output positions and Lr computed ones (whole vectors); ``wide``: the
    output's gradient with element (ho, wo) at ho * Wp + wo, plane stride Lr (for dW)."""

    def __init__(self, C, F, H, W, pads, kh, kw):
        top, bottom, left, right = pads
        v = _state["lanes"]
        self.Hp, self.Wp = H + top + bottom, W + left + right
        self.Ho, self.Wo = self.Hp - kh + 1, self.Wp - kw + 1
        self.L = (self.Ho - 1) * self.Wp + self.Wo
        self.Lr = -(-self.L // v) * v
        self.S = -(-(self.Hp * self.Wp + v) // v) * v
        self.key = (C, F, H, W, pads, kh, kw)
        self.planes = _Planes(C, H, W, self.S, self.Wp, top * self.Wp + left)
        self.wide = _Planes(F, self.Ho, self.Wo, self.Lr, self.Wp, 0)

    def buffer(self, rt, tag, planes, images):
        """A per-thread buffer of ``images`` blocks of ``planes``, zeroed once (the padding,
        junk and tails around what direct.cpp writes stay zero); keyed by this layout."""
        return rt.scratch((tag, self.key), (images * planes.ch * planes.ds,), np.float32,
                          zero=True)


def _ptr(a):
    return a.ctypes.data


def _source(x):
    return _Source(_ptr(x), None, None, 0)


def _native_args(x, w):
    """w as the library takes it, or None (not float32, or no library: the wide path)."""
    if w.dtype != x.dtype:
        raise TypeError(f"conv2d: w dtype {w.dtype} differs from x dtype {x.dtype}")
    if x.dtype != np.float32 or _lib() is None:
        return None
    return np.ascontiguousarray(w)


def _forward(rt, lay, src, w, bias, relu, out, pool=None):
    """out (and, with ``pool`` = (pool geometry array, switches), the switches) of the
    images of ``src``, split over the threads; ``src`` and every array stay referenced here
    for the duration of the calls."""
    lib = _lib()
    F, C, kh, kw = w.shape
    pk, sw = (None, None) if pool is None else pool
    c = _Forward(lay.planes, src, kh, kw, F, lay.Ho, lay.Wo, lay.Lr, _ptr(w),
                 None if bias is None else _ptr(bias), int(relu),
                 None if pk is None else _ptr(pk), _ptr(out), None if sw is None else _ptr(sw))

    def work(a, e):
        xp = lay.buffer(rt, "direct_x", lay.planes, 1)
        scratch = rt.scratch("direct_out", (_FB_MAX * lay.Lr + 2 * _state["lanes"],),
                             np.float32)
        off = rt.scratch("direct_off", (C * kh * kw,), np.int64)
        lib.conv_direct_forward(ctypes.byref(c), a, e, _ptr(xp), _ptr(scratch), _ptr(off))

    rt.run(work, rt.ranges(out.shape[0]))
    return out


def _geometry_layout(g):
    return _Layout(g.C, g.F, g.H, g.W, (g.ph, g.ph_end, g.pw, g.pw_end), g.kh, g.kw)


def _bias(b):
    return None if b is None else np.ascontiguousarray(b, dtype=np.float32)


def conv2d(rt, x, w, b, g, relu):
    w32 = _native_args(x, w)
    if w32 is None:
        return cpu.conv2d(rt, x, w, b, g, relu)
    x = np.ascontiguousarray(x)
    y = rt.output((g.N, g.F, g.Ho, g.Wo), np.float32)
    return _forward(rt, _geometry_layout(g), _source(x), w32, _bias(b), relu, y)


def conv2d_relu_maxpool(rt, x, w, b, g, pg):
    """(y, switches) of max_pool(relu(conv)) in one pass (each output plane is pooled while
    it is in cache), or None where the pool windows are not plain."""
    w32 = _native_args(x, w) if pg.plain else None
    if w32 is None:
        return None
    x = np.ascontiguousarray(x)
    y = rt.output(pg.y_shape, np.float32)
    sw = rt.output(pg.y_shape, np.int32)
    pk = np.array([pg.kh, pg.kw, pg.sh, pg.sw, pg.Ho, pg.Wo], np.int64)
    _forward(rt, _geometry_layout(g), _source(x), w32, _bias(b), True, y, (pk, sw))
    return y, sw


def conv2d_backward(rt, dy, x, w, g, need_dx=True, need_dw=True):
    w32 = _native_args(x, w)
    if w32 is None:
        return cpu.conv2d_backward(rt, dy, x, w, g, need_dx, need_dw)
    dy = np.ascontiguousarray(dy, dtype=np.float32)
    x = np.ascontiguousarray(x)
    if need_dw and g.F * g.K > DW_MAX_FK:
        dx, _, _ = _backward(rt, g, x, w32, need_dx, False, _source(dy))
        return (dx, *_large_dw(rt, dy, x, w32, g))
    return _backward(rt, g, x, w32, need_dx, need_dw, _source(dy))


def conv2d_relu_maxpool_backward(rt, dy, switches, y, x, w, g, pg, need_dx, need_dw):
    """(dx, dw, db) of :func:`conv2d_relu_maxpool`: the pooled gradient, where the pooled
    output is > 0, is added at its switch straight in the dy planes the kernels read (so
    overlapping windows accumulate), or, where dW runs by :func:`_large_dw`, into a dense dy
    in one pass."""
    w32 = _native_args(x, w) if pg.plain else None
    if w32 is None:
        return None
    check_switches(switches, g.Ho, g.Wo)
    dy = np.ascontiguousarray(dy, dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.float32)
    switches = np.ascontiguousarray(switches)
    src = _Source(_ptr(dy), _ptr(switches), _ptr(y), pg.Ho * pg.Wo)
    x = np.ascontiguousarray(x)
    if need_dw and g.F * g.K > DW_MAX_FK:
        dense = rt.output(g.y_shape, np.float32)
        dense_planes = _Planes(g.F, g.Ho, g.Wo, g.Ho * g.Wo, g.Wo, 0)
        lib = _lib()
        rt.run(lambda a, e: lib.conv_direct_fill(
            ctypes.byref(dense_planes), ctypes.byref(src), a, e,
            _ptr(dense.reshape(g.N, -1)[a])), rt.ranges(g.N))
        dx, _, _ = _backward(rt, g, x, w32, need_dx, False, src)
        return (dx, *_large_dw(rt, dense, x, w32, g))
    return _backward(rt, g, x, w32, need_dx, need_dw, src)


def _backward(rt, g, x, w32, need_dx, need_dw, dsrc):
    """(dx, dw, db) from ``dsrc``, the gradient of the conv output (a direct.cpp Source)."""
    lib = _lib()
    dx = dw = db = None
    if need_dx:
        # the adjoint: dy padded by k - 1 - p, filters flipped and transposed (C x F x kh x kw)
        wT = np.ascontiguousarray(w32.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
        lay_dx = _Layout(g.F, g.C, g.Ho, g.Wo, (g.kh - 1 - g.ph, g.kh - 1 - g.ph_end,
                                                g.kw - 1 - g.pw, g.kw - 1 - g.pw_end),
                         g.kh, g.kw)
        dx = rt.output((g.N, g.C, g.H, g.W), np.float32)
        _forward(rt, lay_dx, dsrc, wT, None, False, dx)
    if need_dw:
        lay = _geometry_layout(g)
        c = _WeightGrad(lay.planes, _source(x), lay.wide, dsrc, g.kh, g.kw, g.F, lay.Lr)
        blk = max(1, _BLOCK_BYTES // (4 * (g.C * lay.S + g.F * lay.Lr)))

        def work(a, e):
            part = np.zeros(g.F * (g.K + 1), np.float32)  # dw, then db
            n = min(e - a, blk)
            xp = lay.buffer(rt, "direct_xw", lay.planes, n)
            dyw = lay.buffer(rt, "direct_dy", lay.wide, n)
            off = rt.scratch("direct_off", (g.K,), np.int64)
            lib.conv_direct_dw(ctypes.byref(c), a, e, n, _ptr(xp), _ptr(dyw), _ptr(off),
                               _ptr(part), _ptr(part[g.F * g.K:]))
            return part

        parts = rt.run(work, rt.ranges(g.N))
        total = parts[0]
        for p in parts[1:]:  # in range order: the result depends only on the thread count
            total += p
        dw, db = total[:g.F * g.K].reshape(g.F, g.C, g.kh, g.kw), total[g.F * g.K:]
    return dx, dw, db


def workspace_bytes(g, limit):
    """Bytes of padded planes and wide dy per thread (at most: 16-float vectors assumed),
    plus the wide path's columns where dW runs on its GEMM."""
    hp, wp = g.H + g.ph + g.ph_end, g.W + g.pw + g.pw_end
    plane_x = hp * wp + 32
    plane_dy = (g.H + g.kh - 1) * (g.W + g.kw - 1) + 32
    dw_image = g.C * plane_x + g.F * (g.Ho * wp + 16)
    per_thread = 4 * max(g.C * plane_x, g.F * plane_dy,
                         dw_image * max(1, _BLOCK_BYTES // (4 * dw_image)))
    gemm = 4 * (g.K + 1) * g.Ho * g.Wo * g.N if g.F * g.K > DW_MAX_FK else 0
    return per_thread * default_threads() + min(gemm, int(limit))
