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

Activations (x, y, dy, dx) are float32, or bf16 bits (``dtype`` :data:`~gpucnn.ops.storage.BF16`,
precision bf16 only): then the ``<kernel>_bf16io`` kernels run (same grids and arguments; they
convert as they gather and round once as they store), y and dx are bf16, and w, b, dW (and
its split partial sums) and db stay float32.

Tile sizes are the ``#define CONV_*`` (FP32) and ``TC_*`` (tensor cores) of the kernel
headers (:func:`implicit_tile`). Tensors may
pass 2^31 elements (the kernels' image offsets are 64-bit); :func:`check_geometry` refuses,
with a clear error, what their 32-bit in-image indexing cannot address.

``conv2d(ctx, g, relu, has_bias)`` and ``conv2d_backward(ctx, g, need_dx, need_dw)`` take
the device context and the checked geometry and return the run of one call.
"""
from __future__ import annotations

from collections import namedtuple
from functools import lru_cache
from math import gcd

import numpy as np

from ...toolchain import kernel_block, source_defines
from ...toolchain.limits import GRID_DIM_MAX, INT32_MAX
from ..gemm import plan_sum_partials
from ..launch import Launch, ceil_div
from ..precision import check_precision
from ..storage import FLOAT32, io_kernel, is_bf16
from .im2col import DW_TARGET_BLOCKS, bias_grad_plan

__all__ = ["conv2d", "conv2d_backward", "implicit_tile", "dgrad_phases", "PhaseAxis",
           "wgrad_split", "workspace_bytes", "check_geometry", "PARTS", "PARTS_SHARE",
           "MIN_SLICES_PER_PART"]

# The backend attribute holding the weight gradient's partial sums (reused across calls).
PARTS = "_conv_implicit_parts"
# The partial sums may use at most 1/PARTS_SHARE of the backend's workspace bound (the share
# the im2col path gives its own split).
PARTS_SHARE = 4
# A split part sums at least this many reduction slices, so that writing and adding its
# partial result stays small next to the products it sums.
MIN_SLICES_PER_PART = 8
# The kernels mark "no tap reaches here" with -2^30 (CONV_NOWHERE): padded sizes stay below.
_MAX_SPATIAL = 1 << 29

# One axis of a backward-data phase (kernels/conv_implicit.cu): pixels h = a + stride * t for
# t < size; taps i = first + u * step for u < count, reading output row t + out0 - u * out_step.
PhaseAxis = namedtuple("PhaseAxis", "a size first step count out0 out_step")


# Where each precision's tile is defined: (kernel file, #define prefix).
_TILES = {"fp32": ("conv_implicit.cu", "CONV"), "tc": ("conv_implicit_tc.cu", "TC")}


@lru_cache(maxsize=None)
def implicit_tile(precision="fp32"):
    """{BM, BN, BK, THREADS} of the kernels of ``precision``: the FP32 tile of
    kernels/conv_implicit.cuh (CONV_*) or the tensor-core one of kernels/tensor_core.cuh
    (TC_*), checked against the launch size of the kernels' annotations."""
    check_precision(precision)
    src, prefix = _TILES["fp32" if precision == "fp32" else "tc"]
    t = dict(source_defines(src, prefix))
    missing = [k for k in ("BM", "BN", "BK", "THREADS") if k not in t]
    if missing:
        raise RuntimeError(f"kernels/{src} lacks #define {prefix}_{missing[0]}")
    for op in ("conv_implicit_fprop", "conv_implicit_dgrad", "conv_implicit_wgrad"):
        name = kernel_name(op, precision)
        if kernel_block(name) != t["THREADS"]:
            raise RuntimeError(f"kernels/{src}: {name} is annotated with "
                               f"block={kernel_block(name)}, the tile needs {t['THREADS']}")
    return {k: t[k] for k in ("BM", "BN", "BK", "THREADS")}


def check_geometry(g, precision="fp32"):
    """ValueError when a tensor of this convolution is too large for the kernels' int32
    indexing inside one image (whole tensors may pass 2^31 elements)."""
    t = implicit_tile(precision)
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


def kernel_name(name, precision):
    """The kernel of ``precision``: ``conv_implicit_<op>`` on CUDA cores (fp32), else
    ``conv_implicit_<op>_<precision>`` (kernels/conv_implicit_tc.cu: same grid, arguments
    and epilogue; the main loop on tensor cores)."""
    return name if precision == "fp32" else f"{name}_{precision}"


def _launch(ctx, name, grid, large_ok, dtype):
    return Launch(ctx, io_kernel(kernel_name(name, ctx.precision), dtype), grid,
                  (implicit_tile(ctx.precision)["THREADS"], 1, 1), large_ok=large_ok)


def _check_dtype(ctx, dtype):
    """bf16 activations have kernels in precision bf16 only (conv_implicit_tc.cu)."""
    if is_bf16(dtype) and ctx.precision != "bf16":
        raise TypeError(f"conv2d (implicit GEMM): bf16 activations (uint16) need precision "
                        f"bf16, the backend computes in {ctx.precision}")


def _i32s(*values):
    return tuple(np.int32(v) for v in values)


def conv2d(ctx, g, relu, has_bias, dtype=FLOAT32):
    check_geometry(g, ctx.precision)
    _check_dtype(ctx, dtype)
    t = implicit_tile(ctx.precision)
    grid = (ceil_div(g.N * g.Ho * g.Wo, t["BN"]), ceil_div(g.Fg, t["BM"]), g.groups)
    launch = _launch(ctx, "conv_implicit_fprop", grid, ("x", "y"), dtype)
    tail = _i32s(g.N, g.C, g.H, g.W, g.F, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw,
                 g.Ho, g.Wo, g.groups, has_bias, bool(relu))
    empty, ys = ctx.empty, g.y_shape

    def run(x, w, b):
        y = empty(ys, dtype)
        # Without a bias the kernel never reads its bias pointer: w stands in (read-only too).
        launch.fire((x, w, w if b is None else b, y, *tail))
        return y
    return run


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


def _dgrad_plan(ctx, g, dtype):
    t = implicit_tile(ctx.precision)
    geom = _i32s(g.N, g.C, g.H, g.W, g.F, g.kh, g.kw, g.sh, g.sw, g.Ho, g.Wo, g.groups)
    phases = []
    for r, c in dgrad_phases(g):
        grid = (ceil_div(g.N * r.size * c.size, t["BN"]), ceil_div(g.Cg, t["BM"]), g.groups)
        phases.append((_launch(ctx, "conv_implicit_dgrad", grid, ("dy", "dx"), dtype),
                       geom + _i32s(r.a, r.size, r.first, r.step, r.count, r.out0, r.out_step)
                       + _i32s(c.a, c.size, c.first, c.step, c.count, c.out0, c.out_step)))
    empty, xs = ctx.empty, g.x_shape

    def run(dy, w):
        dx = empty(xs, dtype)
        for launch, tail in phases:
            launch.fire((dy, w, dx, *tail))
        return dx
    return run


def wgrad_split(g, workspace_limit, target_blocks=DW_TARGET_BLOCKS, precision="fp32"):
    """(parts, positions_per_part) of the weight gradient's reduction over the N*Ho*Wo output
    positions: 1 part when the output tiles give ``target_blocks`` blocks (or the reduction is
    short), else enough parts to reach it, each at least MIN_SLICES_PER_PART slices long, a
    whole number of slices, and all of them within the workspace share for partial sums."""
    t = implicit_tile(precision)
    positions = g.N * g.Ho * g.Wo
    slices = ceil_div(positions, t["BK"])
    blocks = ceil_div(g.K, t["BN"]) * ceil_div(g.Fg, t["BM"]) * g.groups
    parts = min(ceil_div(int(target_blocks), blocks), slices // MIN_SLICES_PER_PART,
                GRID_DIM_MAX[2] // g.groups,
                int(workspace_limit) // PARTS_SHARE // (g.F * g.K * 4))
    if parts <= 1:
        return 1, slices * t["BK"]
    per = ceil_div(slices, parts) * t["BK"]
    return ceil_div(positions, per), per  # no empty parts


def _wgrad_plan(ctx, g, dtype):
    parts, per = wgrad_split(g, ctx.workspace_bytes,
                             getattr(ctx, "dw_target_blocks", DW_TARGET_BLOCKS), ctx.precision)
    t = implicit_tile(ctx.precision)
    grid = (ceil_div(g.K, t["BN"]), ceil_div(g.Fg, t["BM"]), g.groups * parts)
    launch = _launch(ctx, "conv_implicit_wgrad", grid, ("dy", "x", "out"), dtype)
    tail = _i32s(g.N, g.C, g.H, g.W, g.F, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw,
                 g.Ho, g.Wo, g.groups, per)
    add, scalars = plan_sum_partials(ctx, g.F * g.K, parts, 0.0) if parts > 1 else (None, ())
    empty, workspace, ws, count = ctx.empty, ctx.workspace, g.w_shape, parts * g.F * g.K

    def run(dy, x, dw):
        dw = empty(ws, np.float32) if dw is None else dw
        out = dw if add is None else workspace(PARTS, count)
        launch.fire((dy, x, out, *tail))
        if add is not None:
            add.fire((out, dw, *scalars))
        return dw
    return run


def conv2d_backward(ctx, g, need_dx=True, need_dw=True, dtype=FLOAT32):
    check_geometry(g, ctx.precision)
    _check_dtype(ctx, dtype)
    dgrad = _dgrad_plan(ctx, g, dtype) if need_dx else None
    wgrad = _wgrad_plan(ctx, g, dtype) if need_dw else None
    bias, scalars = (bias_grad_plan(ctx, g.N, g.F, g.Ho * g.Wo, dtype) if need_dw
                     else (None, ()))
    empty, F = ctx.empty, g.F

    def run(dy, x, w, dw_out=None, db_out=None):
        dx = dgrad(dy, w) if dgrad is not None else None
        dw = db = None
        if wgrad is not None:
            db = empty((F,), np.float32) if db_out is None else db_out
            bias.fire((dy, db, *scalars))
            dw = wgrad(dy, x, dw_out)
        return dx, dw, db
    return run


def workspace_bytes(g, workspace_limit, target_blocks=DW_TARGET_BLOCKS, precision="fp32"):
    """Bytes of device workspace the implicit algorithm uses for g (forward and dx: none;
    dW: its partial sums when the reduction is split)."""
    parts, _ = wgrad_split(g, workspace_limit, target_blocks, precision)
    return 0 if parts == 1 else parts * g.F * g.K * 4
