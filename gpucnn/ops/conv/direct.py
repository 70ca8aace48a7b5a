"""The ``direct`` CPU convolution: compiled loop nests (``direct.cpp``) instead of im2col + GEMM.

For thin layers (LeNet-5: K = C*kh*kw of 25 and 150, F of 6 and 16) the GEMM route spends
more time writing and reading its column matrix, and in OpenBLAS's edge handling of a 6- or
16-row GEMM, than in arithmetic. ``direct.cpp`` keeps a block of output channels x output
positions in SIMD registers across the whole reduction and reads each tap as one unaligned
vector load of the padded input planes, so nothing is copied but the planes themselves, a
group of images at a time, while they are in cache. Two layouts (direct.cpp's header):
"wide" (a vector is consecutive positions of one image's plane, as in ``wide.py``: the
positions past each output row are junk) and, from 32 images on (:func:`lanes_layout`),
"lanes" (a vector is one position of 16 images: no junk; the forward and dx always take it
then, dW as ``_dw_layout`` says: AlexNet-CIFAR conv2 forward 106-108 -> 83 ms, LeNet-5 conv2
0.84 -> 0.67 ms).

* forward: ``conv_direct_forward`` (bias and ReLU applied on the way out, or the max-pool
  with its switches: :func:`conv2d_relu_maxpool`);
* dx: the same kernel on dy padded by ``k - 1 - p`` with the flipped, transposed filters (a
  stride-1 convolution's adjoint is one);
* dW and db: ``conv_direct_dw``, one register block of channels x taps per pass over a block
  of images that fits in L2 (``_dw_layout``), else Winograd's dW (3x3, 5x5) or the wide
  GEMM;
* the fused backward scatters (adds) the pooled gradient straight into the planes the two
  backward kernels read.

Each thread makes ONE call for its contiguous range of images (a call per block cost a GIL
hand-off each, which made two threads slower than one); its dW partial sums are added in
range order, so a result depends only on the thread count. float32 only (float64 runs the
``wide`` path); needs padding < kernel size and a C++ compiler: :mod:`gpucnn.wide.native`
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
from . import wide, winograd

__all__ = ["SOURCE", "REQUIRES", "available", "lanes", "unavailable_reason", "supports",
           "preferred", "lanes_layout", "conv2d", "conv2d_backward", "conv2d_relu_maxpool",
           "conv2d_relu_maxpool_backward", "workspace_bytes"]

SOURCE = Path(__file__).with_name("direct.cpp")
REQUIRES = ("stride 1, dilation 1, one group, padding smaller than the kernel, and a C++ "
            "compiler to build gpucnn/ops/conv/direct.cpp ($GPUCNN_CXX, default g++)")
# Padded planes and wide dy of the block of images a dW pass walks: L2-sized.
_BLOCK_BYTES = 256 << 10
_FB_MAX = 8  # most output channels per forward register block (sizes the scratch)
# What direct.cpp is built with (-D): _FB_MAX, and the version of the calls in _lib(), bumped
# with any change of their signatures.
_DEFINES = {"GPUCNN_DIRECT_ABI": 7, "GPUCNN_DIRECT_FB_MAX": _FB_MAX}

_state: dict = {}
_state_lock = threading.Lock()
_P, _L = ctypes.c_void_p, ctypes.c_long


class _Planes(ctypes.Structure):
    """direct.cpp ``Planes``: element (r, c) of channel ch of a block's image i at
    (i / gn) * gs + i % gn + d0 + ch * ds + r * dr + c * cs."""
    _fields_ = [(n, _L) for n in ("ch", "rows", "cols", "ds", "dr", "cs", "d0", "gs", "gn")]


class _Source(ctypes.Structure):
    """direct.cpp ``Source``: NCHW images, or (sw set) a pooled gradient to scatter."""
    _fields_ = [("x", _P), ("sw", _P), ("yq", _P), ("plane_q", _L)]


class _Rows(ctypes.Structure):
    """direct.cpp ``Rows``: the output positions computed, n rows of len floats."""
    _fields_ = [("n", _L), ("stride", _L), ("len", _L)]


class _Forward(ctypes.Structure):
    _fields_ = [("in_", _Planes), ("src", _Source)] + [
        (n, _L) for n in ("kh", "kw", "F", "Ho", "Wo")] + [("rows", _Rows), ("Ls", _L)] + [
        ("w", _P), ("bias", _P), ("relu", ctypes.c_int), ("pool", _P), ("y", _P), ("sw", _P)]


class _WeightGrad(ctypes.Structure):
    _fields_ = [("in_", _Planes), ("src", _Source), ("dy", _Planes), ("dsrc", _Source)] + [
        (n, _L) for n in ("kh", "kw", "F")] + [("rows", _Rows), ("keep", _P)]


def _check_facts(lib):
    """NativeUnavailable unless the library was built with _DEFINES and lays out its structs
    as the mirrors above do."""
    expected = {**_DEFINES, **native.layout({
        "Planes": _Planes, "Source": _Source, "Rows": _Rows, "Forward": _Forward,
        "WeightGrad": _WeightGrad})}
    wrong = native.compare_facts(native.facts(lib, "conv_direct_facts"), expected)
    if wrong:
        raise native.NativeUnavailable(f"{SOURCE.name} does not match direct.py: "
                                       + "; ".join(wrong))


def _lib():
    """The loaded library, or None (the reason in unavailable_reason())."""
    if "lib" not in _state:
        with _state_lock:
            if "lib" not in _state:
                lib = None
                try:
                    lib = native.load(SOURCE, _DEFINES)
                    _check_facts(lib)
                    lib.conv_direct_lanes.restype = ctypes.c_int
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


def lanes():
    """Floats per SIMD vector of the loaded library (16 with AVX-512), or None."""
    return _state.get("lanes") if available() else None


def unavailable_reason():
    """Why :func:`available` is False, or None."""
    _lib()
    return _state.get("error")


def _pads_fit(g):
    return (0 <= g.ph < g.kh and 0 <= g.ph_end < g.kh and 0 <= g.pw < g.kw
            and 0 <= g.pw_end < g.kw)


def supports(g):
    return wide.fast_conv(g) and _pads_fit(g) and available()


# Where dW runs (_dw_layout), measured on 2 Zen 4 vCPUs at batch 128:
#  - lanes layout (batch >= 32) where K >= DW_LANES_MIN_K or the wide planes waste more than
#    DW_LANES_MIN_JUNK of their positions: its passes walk 16 images at once (AlexNet-CIFAR
#    conv2: 99-106 ms against Winograd's 133-157 and the GEMM's 144-164; 64 -> 192 on 27x27:
#    316 vs 423-452); with few taps its transposes in cost more than they save (LeNet-5
#    conv1, K = 25, 12% junk: wide 0.46-0.50 ms, lanes 0.71-0.86);
#  - else wide, up to F x K = DW_MAX_FK (LeNet-5 conv2: 0.5 against the GEMM's 2.1 ms): a
#    block of images that fits in L2 is one image for a layer with many channels, so its
#    passes multiply;
#  - else Winograd F(r x r, m x m) for square 3x3 (m = 4) and 5x5 (m = 2) kernels, else the
#    wide path's GEMM.
DW_LANES_MIN_K = 128
DW_LANES_MIN_JUNK = 0.2
DW_MAX_FK = 1 << 15
_DW_WINOGRAD_M = {3: 4, 5: 2}


def _dw_layout(g):
    """The layout dW runs in by direct.cpp, or None (then :func:`_large_dw`)."""
    wide = _geometry_layout(g, False)
    junk = 1 - g.Ho * g.Wo / wide.rows.len
    if lanes_layout(g.N) and (g.K >= DW_LANES_MIN_K or junk > DW_LANES_MIN_JUNK):
        return _geometry_layout(g, True)
    return wide if g.F * g.K <= DW_MAX_FK else None


def _large_dw(rt, dy, x, w32, g):
    """(dW, db) where direct.cpp does not run dW (_dw_layout is None)."""
    m = _DW_WINOGRAD_M.get(g.kh) if g.kh == g.kw else None
    if m is None:
        _, dw, db = wide.conv2d_backward(rt, dy, x, w32, g, need_dx=False, need_dw=True)
        return dw, db
    return winograd.weight_grad(rt, dy, x, m, g.kh, (g.ph, g.pw, g.ph_end, g.pw_end))


def preferred(g):
    """Whether ``auto`` runs ``direct`` for geometry g on the CPU (where Winograd does not):
    wherever it runs. Measured on AMD EPYC Zen 4 (2 vCPUs; README "CPU algorithms"), its
    forward and dx beat the wide GEMMs on every LeNet-5 and AlexNet layer (1.4-4x)."""
    return supports(g)


def lanes_layout(N):
    """Whether a batch of N images runs in the lanes layout (V images per vector, no junk
    positions; direct.cpp's header): from two whole groups of V images on (fewer leave most
    lanes idle)."""
    return N >= 2 * _state["lanes"]


class _Layout:
    """A convolution's planes in one of direct.cpp's layouts: ``planes``, the input padded to
    Hp x Wp; ``grad``, the output's gradient at the output positions (for dW); ``rows``, the
    positions computed; ``Ls``, scratch floats per output channel; ``group``, images per
    group (1: wide, V: lanes). Wide planes have a plane stride S with a zero tail of at least
    one vector (the last position block reads it), and compute Lr positions (L useful ones
    rounded up to whole vectors)."""

    def __init__(self, C, F, H, W, pads, kh, kw, lanes):
        top, bottom, left, right = pads
        v = _state["lanes"]
        self.Hp, self.Wp = H + top + bottom, W + left + right
        self.Ho, self.Wo = self.Hp - kh + 1, self.Wp - kw + 1
        self.key = (C, F, H, W, pads, kh, kw, lanes)
        Hp, Wp, Ho, Wo = self.Hp, self.Wp, self.Ho, self.Wo
        if lanes:
            ds, dr = Hp * Wp * v, Wp * v
            self.planes = _Planes(C, H, W, ds, dr, v, (top * Wp + left) * v, C * ds, v)
            self.grad = _Planes(F, Ho, Wo, Ho * dr, dr, v, 0, F * Ho * dr, v)
            self.rows, self.Ls, self.group = _Rows(Ho, dr, Wo * v), Ho * dr, v
        else:
            L = (Ho - 1) * Wp + Wo
            Lr = -(-L // v) * v
            S = -(-(Hp * Wp + v) // v) * v
            self.planes = _Planes(C, H, W, S, Wp, 1, top * Wp + left, C * S, 1)
            self.grad = _Planes(F, Ho, Wo, Lr, Wp, 1, 0, F * Lr, 1)
            self.rows, self.Ls, self.group = _Rows(1, 0, Lr), Lr, 1

    def keep(self):
        """Wide layout: int32 per computed position, -1 where it is useful, 0 at junk (the
        weight gradient masks x there), else None."""
        if self.group > 1:
            return None
        p = np.arange(self.rows.len)
        return np.where((p % self.Wp < self.Wo) & (p < (self.Ho - 1) * self.Wp + self.Wo),
                        np.int32(-1), np.int32(0))

    def buffer(self, rt, tag, planes, groups):
        """A per-thread buffer of ``groups`` groups of ``planes``, zeroed once (the padding,
        junk and tails around what direct.cpp writes stay zero); keyed by this layout."""
        return rt.scratch((tag, self.key), (groups * planes.gs,), np.float32, zero=True)


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
    c = _Forward(lay.planes, src, kh, kw, F, lay.Ho, lay.Wo, lay.rows, lay.Ls, _ptr(w),
                 None if bias is None else _ptr(bias), int(relu),
                 None if pk is None else _ptr(pk), _ptr(out), None if sw is None else _ptr(sw))

    def work(a, e):
        xp = lay.buffer(rt, "direct_x", lay.planes, 1)
        scratch = rt.scratch("direct_out", (_FB_MAX * lay.Ls + 2 * _state["lanes"],),
                             np.float32)
        off = rt.scratch("direct_off", (C * kh * kw,), np.int64)
        lib.conv_direct_forward(ctypes.byref(c), a, e, _ptr(xp), _ptr(scratch), _ptr(off))

    rt.run(work, rt.ranges(out.shape[0], quantum=lay.group))
    return out


def _geometry_layout(g, lanes):
    return _Layout(g.C, g.F, g.H, g.W, (g.ph, g.ph_end, g.pw, g.pw_end), g.kh, g.kw, lanes)


def _bias(b):
    return None if b is None else np.ascontiguousarray(b, dtype=np.float32)


def conv2d(rt, x, w, b, g, relu):
    w32 = _native_args(x, w)
    if w32 is None:
        return wide.conv2d(rt, x, w, b, g, relu)
    x = np.ascontiguousarray(x)
    y = rt.output((g.N, g.F, g.Ho, g.Wo), np.float32)
    return _forward(rt, _geometry_layout(g, lanes_layout(g.N)), _source(x), w32, _bias(b), relu,
                    y)


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
    _forward(rt, _geometry_layout(g, lanes_layout(g.N)), _source(x), w32, _bias(b), True, y,
             (pk, sw))
    return y, sw


def conv2d_backward(rt, dy, x, w, g, need_dx=True, need_dw=True):
    w32 = _native_args(x, w)
    if w32 is None:
        return wide.conv2d_backward(rt, dy, x, w, g, need_dx, need_dw)
    dy = np.ascontiguousarray(dy, dtype=np.float32)
    x = np.ascontiguousarray(x)
    if need_dw and _dw_layout(g) is None:
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
    if need_dw and _dw_layout(g) is None:
        dense = rt.output(g.y_shape, np.float32)
        dense_planes = _Planes(g.F, g.Ho, g.Wo, g.Ho * g.Wo, g.Wo, 1, 0, g.F * g.Ho * g.Wo, 1)
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
                         g.kh, g.kw, lanes_layout(g.N))
        dx = rt.output((g.N, g.C, g.H, g.W), np.float32)
        _forward(rt, lay_dx, dsrc, wT, None, False, dx)
    if need_dw:
        lay = _dw_layout(g)
        keep = lay.keep()
        c = _WeightGrad(lay.planes, _source(x), lay.grad, dsrc, g.kh, g.kw, g.F, lay.rows,
                        None if keep is None else _ptr(keep))
        blk = max(1, _BLOCK_BYTES // (4 * (lay.planes.gs + lay.grad.gs)))  # groups

        def work(a, e):
            part = np.zeros(g.F * (g.K + 1), np.float32)  # dw, then db
            n = min(-(-(e - a) // lay.group), blk)
            xp = lay.buffer(rt, "direct_xw", lay.planes, n)
            dyw = lay.buffer(rt, "direct_dy", lay.grad, n)
            off = rt.scratch("direct_off", (g.K,), np.int64)
            lib.conv_direct_dw(ctypes.byref(c), a, e, n * lay.group, _ptr(xp), _ptr(dyw),
                               _ptr(off), _ptr(part), _ptr(part[g.F * g.K:]))
            return part

        parts = rt.run(work, rt.ranges(g.N, quantum=lay.group))
        total = parts[0]
        for p in parts[1:]:  # in range order: the result depends only on the thread count
            total += p
        dw, db = total[:g.F * g.K].reshape(g.F, g.C, g.kh, g.kw), total[g.F * g.K:]
    return dx, dw, db


def workspace_bytes(g, limit):
    """Bytes of padded planes, dy planes and scratch per thread (with this machine's vector
    width once the library is loaded, else 16 floats), plus what dW takes where it leaves
    direct.cpp (Winograd's blocks or the wide path's columns)."""
    v = _state.get("lanes") or 16
    group = v if g.N >= 2 * v else 1
    hp, wp = g.H + g.ph + g.ph_end, g.W + g.pw + g.pw_end
    planes_x = group * g.C * (hp * wp + v)
    planes_dx = group * g.F * ((g.H + g.kh - 1) * (g.W + g.kw - 1) + v)
    dw_group = group * (g.C * (hp * wp + v) + g.F * (g.Ho * wp + v))
    scratch = group * _FB_MAX * (max(g.Ho * wp, g.H * (g.W + g.kw - 1)) + v)
    per_thread = 4 * (max(planes_x, planes_dx, dw_group * max(1, _BLOCK_BYTES // (4 * dw_group)))
                      + scratch)
    large = 0
    if group == 1 and g.F * g.K > DW_MAX_FK:  # _dw_layout is None: _large_dw runs
        m = _DW_WINOGRAD_M.get(g.kh) if g.kh == g.kw else None
        large = (winograd.weight_grad_bytes(g, m, limit) * default_threads() if m else
                 min(4 * (g.K + 1) * g.Ho * g.Wo * g.N, int(limit)))
    return per_thread * default_threads() + large
