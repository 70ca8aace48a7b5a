"""conv2d on the device by implicit GEMM (``kernels/conv_implicit.cu``), for ``cuda`` and
``emu``: the GEMM operand tiles are gathered from x / dy / w while they are loaded into
shared memory, so no column matrix exists (the im2col + SGEMM algorithm is ``device.py``).

* forward:  one launch, grid (output-position tiles, filter tiles, groups), bias + ReLU in
  its epilogue, writing NCHW y;
* dx:       one launch per stride phase (:func:`dgrad_phases`; one for stride 1): each input
  pixel gathers only the taps that reach it — no atomics, no zeros of the stride multiplied;
* dW:       one launch, its reduction over the images x output positions split over grid z
  when the output tiles alone give too few blocks (:func:`wgrad_split`); the partial sums
  (the algorithm's only workspace, a few weight-sized buffers) are then added in a fixed
  order by ``sgemm_sum_partials`` (:func:`gpucnn.ops.gemm.sum_partials`);
* db:       ``bias_grad_nchw`` (``kernels/conv_reduce.cu``), as for im2col.

Tile sizes are the ``#define CONV_*`` of the kernel file (:func:`implicit_tile`). Tensors may
pass 2^31 elements (the kernels' image offsets are 64-bit); :func:`check_geometry` refuses,
with a clear error, what their 32-bit in-image indexing cannot address.

``dev`` is a :class:`~gpucnn.backends.device.DeviceBackend`; arguments arrive checked.
"""
from __future__ import annotations

from collections import namedtuple
from functools import lru_cache
from math import gcd

import numpy as np

from ...toolchain import kernel_block, source_defines
from ...toolchain.limits import GRID_DIM_MAX, INT32_MAX
from ..gemm import sum_partials
from ..launch import ceil_div, check_extents
from .device import DW_TARGET_BLOCKS, bias_grad

__all__ = ["conv2d", "conv2d_backward", "implicit_tile", "dgrad_phases", "PhaseAxis",
           "wgrad_split", "workspace_bytes", "check_geometry", "PARTS", "PARTS_SHARE"]

# The backend attribute holding the weight gradient's partial sums (reused across calls).
PARTS = "_conv_implicit_parts"
# The partial sums may use at most 1/PARTS_SHARE of the backend's workspace bound (the share
# the im2col path gives its own split).
PARTS_SHARE = 4
# A split part sums at least this many reduction slices, so that writing and adding its
# partial result stays small next to the products it sums.
_MIN_SLICES_PER_PART = 8
# The kernels mark "no tap reaches here" with -2^30 (CONV_NOWHERE): padded sizes stay below.
_MAX_SPATIAL = 1 << 29

# One axis of a backward-data phase (kernels/conv_implicit.cu): pixels h = a + stride * t for
# t < size; taps i = first + u * step for u < count, reading output row t + out0 - u * out_step.
PhaseAxis = namedtuple("PhaseAxis", "a size first step count out0 out_step")


@lru_cache(maxsize=None)
def implicit_tile():
    """{BM, BN, BK, TM, TN, THREADS, ...} from kernels/conv_implicit.cu, checked against the
    launch size of its kernels' annotations."""
    t = dict(source_defines("conv_implicit.cu", "CONV"))
    missing = [k for k in ("BM", "BN", "BK", "THREADS") if k not in t]
    if missing:
        raise RuntimeError(f"kernels/conv_implicit.cu lacks #define CONV_{missing[0]}")
    for name in ("conv_implicit_fprop", "conv_implicit_dgrad", "conv_implicit_wgrad"):
        if kernel_block(name) != t["THREADS"]:
            raise RuntimeError(f"kernels/conv_implicit.cu: {name} is annotated with "
                               f"block={kernel_block(name)}, the tile needs {t['THREADS']}")
    return t


def check_geometry(g):
    """ValueError when a tensor of this convolution is too large for the kernels' int32
    indexing inside one image (whole tensors may pass 2^31 elements)."""
    t = implicit_tile()
    hp, wp = g.H + g.ph + g.ph_end, g.W + g.pw + g.pw_end
    limits = (("C*H*W of the padded input", g.C * hp * wp, INT32_MAX),
              ("F*Ho*Wo", g.F * g.Ho * g.Wo, INT32_MAX),
              ("the weight tensor's size", g.F * g.K, INT32_MAX),
              ("N*Ho*Wo (output positions)", g.N * g.Ho * g.Wo, INT32_MAX - t["BN"]),
              ("N*H*W (input pixels)", g.N * g.H * g.W, INT32_MAX - t["BN"]),
              ("the padded height or width", max(hp, wp), _MAX_SPATIAL - 1),
              ("groups", g.groups, GRID_DIM_MAX[2]),
              ("filter tiles per group", ceil_div(max(g.Fg, g.Cg), t["BM"]), GRID_DIM_MAX[1]))
    for what, value, limit in limits:
        if value > limit:
            raise ValueError(f"conv2d (implicit GEMM): {what} = {value} exceeds {limit}, the "
                             f"most the kernels' 32-bit indexing allows (use a smaller "
                             f"layer, or algo='im2col')")


def _launch(dev, name, grid, args, large_ok):
    check_extents(name, args, large_ok)
    dev.kernel(name)(grid, (implicit_tile()["THREADS"], 1, 1), args)


def _i32s(*values):
    return tuple(np.int32(v) for v in values)


def conv2d(dev, x, w, b, g, relu):
    check_geometry(g)
    t = implicit_tile()
    y = dev.empty(g.y_shape, np.float32)
    grid = (ceil_div(g.N * g.Ho * g.Wo, t["BN"]), ceil_div(g.Fg, t["BM"]), g.groups)
    # Without a bias the kernel never reads its bias pointer: w stands in (read-only too).
    args = (x, w, w if b is None else b, y,
            *_i32s(g.N, g.C, g.H, g.W, g.F, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw,
                   g.Ho, g.Wo, g.groups, b is not None, bool(relu)))
    _launch(dev, "conv_implicit_fprop", grid, args, large_ok=("x", "y"))
    return y


def _axis_phases(size, k, s, p, d):
    """The stride phases of one axis: for each a < s, the pixels a, a + s, ... and the taps
    that reach them (tap i reaches pixel h iff h + p - i*d is a multiple of s)."""
    step = s // gcd(s, d)  # the taps reaching a pixel repeat every s / gcd(s, d)
    phases = []
    for a in range(s):
        pixels = ceil_div(size - a, s) if a < size else 0
        first = next((i for i in range(min(k, step)) if (i * d - a - p) % s == 0), None)
        count = 0 if first is None else (k - 1 - first) // step + 1
        first = first or 0
        out0 = (a + p - first * d) // s  # exact when count > 0
        phases.append(PhaseAxis(a, pixels, first, step, count, out0, step * d // s))
    return phases


def dgrad_phases(g):
    """[(PhaseAxis rows, PhaseAxis columns), ...]: the backward-data launches, the phases
    with at least one pixel (sh * sw of them when the input is at least a stride wide)."""
    rows = _axis_phases(g.H, g.kh, g.sh, g.ph, g.dh)
    cols = _axis_phases(g.W, g.kw, g.sw, g.pw, g.dw)
    return [(r, c) for r in rows for c in cols if r.size and c.size]


def _dgrad(dev, dy, w, g):
    t = implicit_tile()
    dx = dev.empty(g.x_shape, np.float32)
    geom = _i32s(g.N, g.C, g.H, g.W, g.F, g.kh, g.kw, g.sh, g.sw, g.Ho, g.Wo, g.groups)
    for r, c in dgrad_phases(g):
        grid = (ceil_div(g.N * r.size * c.size, t["BN"]), ceil_div(g.Cg, t["BM"]), g.groups)
        args = (dy, w, dx, *geom,
                *_i32s(r.a, r.size, r.first, r.step, r.count, r.out0, r.out_step),
                *_i32s(c.a, c.size, c.first, c.step, c.count, c.out0, c.out_step))
        _launch(dev, "conv_implicit_dgrad", grid, args, large_ok=("dy", "dx"))
    return dx


def wgrad_split(g, workspace_limit, target_blocks=DW_TARGET_BLOCKS):
    """(parts, positions_per_part) of the weight gradient's reduction over the N*Ho*Wo output
    positions: 1 part when the output tiles give ``target_blocks`` blocks (or the reduction is
    short), else enough parts to reach it, each at least _MIN_SLICES_PER_PART slices long, a
    whole number of slices, and all of them within the workspace share for partial sums."""
    t = implicit_tile()
    positions = g.N * g.Ho * g.Wo
    slices = ceil_div(positions, t["BK"])
    blocks = ceil_div(g.K, t["BN"]) * ceil_div(g.Fg, t["BM"]) * g.groups
    parts = min(ceil_div(int(target_blocks), blocks), slices // _MIN_SLICES_PER_PART,
                GRID_DIM_MAX[2] // g.groups,
                int(workspace_limit) // PARTS_SHARE // (g.F * g.K * 4))
    if parts <= 1:
        return 1, slices * t["BK"]
    per = ceil_div(slices, parts) * t["BK"]
    return ceil_div(positions, per), per  # no empty parts


def _wgrad(dev, dy, x, g):
    dw = dev.empty(g.w_shape, np.float32)
    parts, per = wgrad_split(g, dev.workspace_bytes,
                             getattr(dev, "dw_target_blocks", DW_TARGET_BLOCKS))
    out = dw if parts == 1 else dev.workspace(PARTS, parts * g.F * g.K)
    t = implicit_tile()
    grid = (ceil_div(g.K, t["BN"]), ceil_div(g.Fg, t["BM"]), g.groups * parts)
    args = (dy, x, out, *_i32s(g.N, g.C, g.H, g.W, g.F, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw,
                               g.dh, g.dw, g.Ho, g.Wo, g.groups, per))
    _launch(dev, "conv_implicit_wgrad", grid, args, large_ok=("dy", "x", "out"))
    if parts > 1:
        sum_partials(dev, out, dw, g.F * g.K, parts, 0.0)
    return dw


def conv2d_backward(dev, dy, x, w, g, need_dx=True, need_dw=True):
    check_geometry(g)
    dx = _dgrad(dev, dy, w, g) if need_dx else None
    dw = db = None
    if need_dw:
        db = dev.empty((g.F,), np.float32)
        bias_grad(dev, dy, db, g.N, g.F, g.Ho * g.Wo)
        dw = _wgrad(dev, dy, x, g)
    return dx, dw, db


def workspace_bytes(g, workspace_limit, target_blocks=DW_TARGET_BLOCKS):
    """Bytes of device workspace the implicit algorithm uses for g (forward and dx: none;
    dW: its partial sums when the reduction is split)."""
    parts, _ = wgrad_split(g, workspace_limit, target_blocks)
    return 0 if parts == 1 else parts * g.F * g.K * 4
