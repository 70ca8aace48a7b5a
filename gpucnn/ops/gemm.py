"""Single-precision GEMM on the device: ``kernels/sgemm.cu`` (the tiled, register-blocked,
batched SGEMM with a bias/beta/ReLU epilogue, and sgemm_sum_partials), used by every
convolution and fully connected layer. Its plain reference is :func:`reference`; tests in
``tests/ops/test_gemm.py``.

The tile constants are read from the ``#define SGEMM_*`` lines of ``kernels/sgemm.cu`` (via
the toolchain) and checked for consistency here, so the grid computed below and the kernel
cannot disagree. With ``ctx.use_cublas`` (the ``cuda`` backend, GPUCNN_CUBLAS=1) the planned
GEMMs run ``xp.matmul`` (cuBLAS) instead, for comparison benchmarks.

Which kernel a launch runs (:func:`sgemm_plan`), decided here and nowhere else:

* **transposes**: ``sgemm_<op(A)><op(B)>``, ``n`` = as stored, ``t`` = transposed; each
  combination is its own compiled kernel (no run-time branch in the main loop);
* **precision** (``ctx.precision``, :mod:`gpucnn.ops.precision`): ``fp32`` runs the kernels of
  ``kernels/sgemm.cu`` (CUDA cores); ``tf32``, ``3xtf32`` and ``bf16`` run
  ``sgemm_<precision>_XY`` of ``kernels/sgemm_tc.cu`` (tensor cores), whose one tile
  (``"tc"``: 128 x 128, the implicit-GEMM convolution's) replaces the tile choice below; the
  arguments, the batching, the split-K and the epilogue are the same;
* **tile** (:func:`choose_tile`): the 64 x 64 tile (``sgemm_small_*``, 64 threads) when M or N
  fits in 64 (a 128-wide tile would leave at least half of that side idle) or when the
  128 x 128 tile would give fewer than :data:`LARGE_TILE_MIN_BLOCKS` blocks in all (grid x
  batches): under one block per SM of an H100/H200 (132 SMs), the 4x more small blocks fill
  the GPU better; otherwise the 128 x 128 tile (256 threads);
* **split-K** (:func:`gemm_plan`, the plain 2-D GEMMs of :func:`plan_gemm`: the fully
  connected layers): the large tile only when it alone gives :data:`FILL_BLOCKS` blocks (two
  per SM of an H100), else the small one; when that still gives fewer, K is split into
  parts of at least :data:`SPLIT_MIN_K` (whole BK slices, the last part possibly shorter),
  enough of them for FILL_BLOCKS blocks. Each part's block z writes a partial product into
  a workspace (no epilogue), and ``sgemm_splitk_epilogue`` adds the parts in part order and
  then applies bias, beta and ReLU once (:class:`SplitKGemm`). No atomics: the same bits on
  every run. A skinny FC GEMM (batch rows x 4096 outputs, K in the thousands) gets 128 or
  fewer small tiles, so without the split most of a 132-SM GPU would idle on it;
* **vector loads**, per operand (:func:`vector_ok`): 128-bit global loads when the operand's
  first element is 16-byte aligned and its leading dimension and batch/reduction strides are
  multiples of 4 floats (then every 4-float chunk the kernel reads starts 16-byte aligned);
  else scalar loads. Chunks that cross a matrix edge are read with scalar loads either way;
* **bf16 activations** (``dtypes``, precision bf16, :func:`gemm_io_suffix`): the fully
  connected layer's GEMMs with activation operands held in bf16 bits (uint16,
  gpucnn/ops/storage.py) run ``sgemm_bf16_XY`` + a suffix naming which of A, B, C are bf16
  (the table :data:`~gpucnn.ops.gemm_dtypes.BF16_GEMMS`); their bf16 operands are read by
  scalar loads. A split K of a bf16 C writes float32 parts (the ``_bf16a`` kernels), adds
  them in the float epilogue into a float32 workspace and rounds that once into C
  (``cast_to_bf16``, kernels/cast.cu).
"""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np

from ..toolchain import kernel_block, source_defines
from ..toolchain.limits import GRID_DIM_MAX
from .launch import Launch, ceil_div, i32, plan_1d
from .gemm_dtypes import BF16_GEMMS, gemm_io_suffix
from .gemm_host import HostGemm, cublas_gemm
from .precision import check_precision
from .storage import FLOAT32, is_bf16

__all__ = ["LARGE_TILE_MIN_BLOCKS", "FILL_BLOCKS", "SPLIT_MIN_K", "SPLIT_PARTS_SHARE",
           "sgemm_tiles", "sgemm_tile", "tile_count", "choose_tile", "array_address", "vector_ok",
           "sgemm_kernel_name", "BF16_GEMMS", "gemm_io_suffix", "sgemm_plan", "sgemm_launch",
           "GemmPlan", "gemm_plan", "SgemmLaunch", "HostGemm", "SplitKGemm", "sgemm",
           "plan_sum_partials", "sum_partials", "plan_gemm", "gemm", "reference"]

# The 128 x 128 tile needs at least this many blocks (over the grid and the batches); fewer
# means part of a 132-SM GPU would idle, and the 64 x 64 tile (4x the blocks) is used.
LARGE_TILE_MIN_BLOCKS = 128
# Blocks a plain GEMM (gemm_plan) aims for: two per SM of an H100 (132 SMs), so that every SM
# has a second block to switch to while one waits on memory.
FILL_BLOCKS = 2 * 132
# The shortest K part of a split: 8 BK slices. Shorter parts would spend more on writing and
# re-reading their partial tile than on the slices they multiply. (AlexNet-CIFAR's dW of a
# 1024 x 1024 layer at batch 128, 256 small tiles over K = 128, needs parts of 64.)
SPLIT_MIN_K = 64
# The parts of a split may use at most 1/SPLIT_PARTS_SHARE of the backend's workspace bound
# (the share the convolutions give their dW partial sums). Below FILL_BLOCKS tiles they are
# at most about 2 * FILL_BLOCKS small tiles, 8.6 MB, so the default bound never binds.
SPLIT_PARTS_SHARE = 4
# The workspace tag of the parts (used by one GEMM at a time: launches are in stream order).
SPLIT_WORKSPACE = "_gemm_parts"
# Threads per output of the ordered sums (sgemm_ordered_sum): up to this many, load the parts.
SUM_MAX_LANES = 8
# Where a split K of a bf16 C puts its float32 sum before the rounding (SplitKGemm).
SPLIT_OUT_WORKSPACE = "_gemm_out"


@lru_cache(maxsize=None)
def sgemm_tiles():
    """``{"large": {...}, "small": {...}}``: each tile's BM, BN, THREADS and the shared BK,
    TM, TN, WM, WN, PAD, from kernels/sgemm.cu, checked for consistency."""
    d = dict(source_defines("sgemm.cu", "SGEMM"))
    shared = ("BK", "TM", "TN", "WM", "WN", "PAD")
    need = ("BM", "BN", "THREADS", "SMALL_BM", "SMALL_BN", "SMALL_THREADS") + shared
    missing = [k for k in need if k not in d]
    if missing:
        raise RuntimeError(f"kernels/sgemm.cu lacks #define SGEMM_{missing[0]}")
    tc = dict(source_defines("sgemm_tc.cu", "TC"))
    tiles = {"tc": {k: tc[k] for k in ("BM", "BN", "BK", "THREADS")}}
    for name, prefix in (("large", ""), ("small", "SMALL_")):
        t = {k: d[prefix + k] for k in ("BM", "BN", "THREADS")} | {k: d[k] for k in shared}
        if (t["BM"] // t["TM"]) * (t["BN"] // t["TN"]) != t["THREADS"] or t["BM"] % t["TM"] \
                or t["BN"] % t["TN"]:
            raise RuntimeError(f"kernels/sgemm.cu: SGEMM {name} tile {t} is inconsistent: "
                               f"THREADS must be (BM/TM)*(BN/TN)")
        if t["BM"] % t["WM"] or t["BN"] % t["WN"] or \
                (t["BM"] // t["WM"]) * (t["BN"] // t["WN"]) * 32 != t["THREADS"]:
            raise RuntimeError(f"kernels/sgemm.cu: SGEMM {name} tile {t}: the warp tiles "
                               f"WM x WN must cover BM x BN with THREADS / 32 warps")
        if (t["BM"] * t["BK"]) % (4 * t["THREADS"]) or (t["BN"] * t["BK"]) % (4 * t["THREADS"]):
            raise RuntimeError(f"kernels/sgemm.cu: SGEMM {name} tile {t}: BM*BK and BN*BK "
                               f"must be multiples of 4*THREADS (float4 chunks per thread)")
        tiles[name] = t
    return tiles


def sgemm_tile():
    """The large (default) tile: {BM, BN, BK, TM, TN, THREADS, WM, WN, PAD}."""
    return sgemm_tiles()["large"]


def tile_count(M, N, tile):
    """Output tiles (blocks per matrix) of an M x N product with ``tile``."""
    t = sgemm_tiles()[tile]
    return ceil_div(M, t["BM"]) * ceil_div(N, t["BN"])


def choose_tile(M, N, batches=1, min_blocks=LARGE_TILE_MIN_BLOCKS, precision="fp32"):
    """``"large"`` or ``"small"`` for an M x N product computed ``batches`` times in one
    launch: large when both sides exceed the small tile and the large tile gives at least
    ``min_blocks`` blocks (the rule is in the module docstring); ``"tc"`` on tensor cores."""
    if precision != "fp32":
        return "tc"
    small = sgemm_tiles()["small"]
    if M <= small["BM"] or N <= small["BN"]:
        return "small"
    blocks = tile_count(M, N, "large") * max(1, int(batches))
    return "large" if blocks >= min_blocks else "small"


def array_address(arr):
    """The device (or host) address of an array's first element, None if unknown."""
    for attr in ("__cuda_array_interface__", "__array_interface__"):
        iface = getattr(arr, attr, None)
        if iface is not None:
            return int(iface["data"][0])
    return None


def vector_ok(arr, ld, strides=()):
    """Whether the kernel may read operand ``arr`` with 128-bit loads: its first element
    16-byte aligned, ``ld`` and every batch/reduction stride a multiple of 4 floats."""
    addr = array_address(arr)
    return (addr is not None and addr % 16 == 0 and int(ld) % 4 == 0
            and all(int(s) % 4 == 0 for s in strides))


def sgemm_kernel_name(tile, trans_a, trans_b, precision="fp32"):
    """``sgemm[_small]_XY`` (X = op(A), Y = op(B); ``n`` as stored, ``t`` transposed), or
    ``sgemm_<precision>_XY`` on tensor cores (tile ``"tc"``)."""
    xy = f"{'t' if trans_a else 'n'}{'t' if trans_b else 'n'}"
    if precision != "fp32":
        check_precision(precision)
        if tile != "tc":
            raise ValueError(f"sgemm: precision {precision} runs the 'tc' tile, not {tile!r}")
        return f"sgemm_{precision}_{xy}"
    if tile not in ("large", "small"):
        raise ValueError(f"sgemm: tile must be 'large' or 'small', got {tile!r}")
    return f"sgemm{'_small' if tile == 'small' else ''}_{xy}"


def sgemm_plan(M, N, trans_a=False, trans_b=False, batch_y=1, batch_z=1, tile=None,
               precision="fp32", dtypes=None):
    """``(kernel name, grid, block)`` of an sgemm launch (``tile=None``: by shape; ``dtypes``:
    those of A, B, C, None for float32)."""
    tile = tile or choose_tile(M, N, batch_y * batch_z, precision=precision)
    name = sgemm_kernel_name(tile, trans_a, trans_b, precision) + gemm_io_suffix(
        trans_a, trans_b, dtypes, precision)
    t = sgemm_tiles()[tile]
    if batch_y > GRID_DIM_MAX[1] or batch_z > GRID_DIM_MAX[2]:
        raise ValueError(f"sgemm: batch ({batch_y}, {batch_z}) exceeds the grid limit "
                         f"{GRID_DIM_MAX[1:]}")
    tiles = ceil_div(M, t["BM"]) * ceil_div(N, t["BN"])
    grid = (max(1, tiles), max(1, int(batch_y)), max(1, int(batch_z)))
    return name, grid, (t["THREADS"], 1, 1)


def sgemm_launch(M, N, batch_y=1, batch_z=1, tile=None):
    """(grid, block) of an sgemm launch computing ``batch_y * batch_z`` M x N products."""
    _name, grid, block = sgemm_plan(M, N, batch_y=batch_y, batch_z=batch_z, tile=tile)
    return grid, block


class GemmPlan(NamedTuple):
    """How :func:`gemm_plan` runs a 2-D GEMM: the sgemm kernel, its grid (z = the parts of
    K) and block, the tile, and the split: ``split`` parts of ``k_part`` (the last one
    ``k_last``) along K; ``split == 1``: one launch with the epilogue, no workspace."""
    kernel: str
    grid: tuple
    block: tuple
    tile: str
    split: int
    k_part: int
    k_last: int

    @property
    def blocks(self):
        return self.grid[0] * self.grid[1] * self.grid[2]


def gemm_plan(M, N, K, trans_a=False, trans_b=False, *, tile=None, split=None,
              max_part_floats=None, precision="fp32", dtypes=None):
    """The :class:`GemmPlan` of the 2-D GEMM op(A) (M x K) @ op(B) (K x N) (the rule is in the
    module docstring). ``tile`` / ``split`` override the choices (tests, benchmarks; a split
    is still cut into whole BK slices, so it may come out lower); ``max_part_floats`` caps
    the workspace of the parts (split * M * N floats); ``dtypes``: those of A, B, C (None:
    float32; the kernel named is the unsplit launch's)."""
    if tile is None:
        tile = choose_tile(M, N, 1, FILL_BLOCKS, precision)
    tiles = tile_count(M, N, tile)
    if split is None:
        split = 1
        if tiles < FILL_BLOCKS:
            split = min(ceil_div(FILL_BLOCKS, tiles), int(K) // SPLIT_MIN_K)
            if max_part_floats is not None:
                split = min(split, int(max_part_floats) // max(1, M * N))
    split = max(1, min(int(split), int(K), GRID_DIM_MAX[2]))
    k_part = int(K)
    if split > 1:
        bk = sgemm_tiles()[tile]["BK"]
        k_part = ceil_div(ceil_div(K, split), bk) * bk   # whole slices: parts stay aligned
        split = ceil_div(K, k_part)                      # no empty part
    name, grid, block = sgemm_plan(M, N, trans_a, trans_b, 1, split, tile, precision, dtypes)
    return GemmPlan(name, grid, block, tile, split, k_part, int(K) - (split - 1) * k_part)


def _bias_mode(has_bias, bias_axis):
    """The kernels' bias_mode: 0 none, 1 one bias per row (axis 0), 2 one per column."""
    return 0 if not has_bias else (1 if bias_axis == 0 else 2)


def _no_bias(ctx, bf16):
    """What a launch without a bias passes as its (float32, never read) bias pointer: None
    for A itself, when A is float32; else a float32 placeholder of one element (made once,
    at plan time), as a bf16 array would not match the kernel's float* parameter."""
    return ctx.empty((1,), np.float32) if bf16[0] else None


def _vector_static(vector, ld, strides):
    return bool(vector) and int(ld) % 4 == 0 and all(int(s) % 4 == 0 for s in strides)


_ZERO, _ONE = np.int32(0), np.int32(1)


class SgemmLaunch(Launch):
    """One planned sgemm launch (see kernels/sgemm.cu for the semantics of every argument):
    ``launch(a, b, c, bias=None)``. ``a``, ``b``, ``c`` are arrays whose data start at the
    first matrix; ``bias_axis`` 0: one bias per row of C (length M), 1: one per column
    (length N). ``tile`` (``"large"``/``"small"``) and ``vector=False`` (scalar loads only)
    override the choices of :func:`sgemm_plan` / :func:`vector_ok`, for tests and
    benchmarks. ``k_last``: the K of the last grid-z block (a split-K's short last part;
    default K). ``dtypes``: those of a, b, c (None: float32; bf16 ones: :data:`BF16_GEMMS`,
    read without 128-bit loads). Everything but the operands' alignment (which decides the
    128-bit loads) is worked out here, once."""
    __slots__ = ("address", "head", "tail", "vec_a", "vec_b", "no_bias")

    def __init__(self, ctx, M, N, K, lda, ldb, ldc, trans_a=False, trans_b=False,
                 batch_y=1, batch_z=1, a_y=0, a_z=0, a_r=0, b_y=0, b_z=0, b_r=0, c_y=0, c_z=0,
                 red_per_z=1, red_total=None, has_bias=False, bias_y=0, bias_axis=1,
                 relu=False, beta=0.0, *, tile=None, vector=True, k_last=None, dtypes=None):
        if red_total is None:
            red_total = red_per_z * batch_z
        k_last = K if k_last is None else k_last
        if not 0 <= k_last <= K or (k_last != K and red_per_z > 1):
            # A block that wraps to its next reduction matrix restarts at K (sgemm.cu).
            raise ValueError(f"sgemm: k_last = {k_last} must lie in [0, K = {K}] and equal K "
                             f"when red_per_z > 1")
        precision = getattr(ctx, "precision", "fp32")   # a context-free check: fp32
        tile = tile or choose_tile(M, N, batch_y * batch_z, precision=precision)
        name, grid, block = sgemm_plan(M, N, trans_a, trans_b, batch_y, batch_z, tile,
                                       precision, dtypes)
        if dtypes is not None and is_bf16(dtypes[2]) and beta != 0.0:
            raise ValueError("sgemm: beta != 0 needs a float32 C")
        t = sgemm_tiles()[tile]
        # In-matrix offsets are int32 in the kernel, including those it forms for tile rows
        # past the matrix edge (never dereferenced) and one slice past K.
        k_pad = ceil_div(K, t["BK"]) * t["BK"] + t["BK"]
        rows_a = ceil_div(M, t["BM"]) * t["BM"]
        rows_b = ceil_div(N, t["BN"]) * t["BN"]
        i32(k_pad * lda + rows_a if trans_a else rows_a * lda + k_pad, "A extent")
        i32(rows_b * ldb + k_pad if trans_b else k_pad * ldb + rows_b, "B extent")
        i32(M * ldc, "C extent")
        bias_mode = _bias_mode(has_bias, bias_axis)
        self.head = (i32(M, "M"), i32(N, "N"), i32(K, "K"), i32(k_last, "k_last"),
                     i32(lda, "lda"), i32(ldb, "ldb"), i32(ldc, "ldc"))
        self.tail = (i32(a_y, "a_stride_y"), i32(a_z, "a_stride_z"), i32(a_r, "a_stride_r"),
                     i32(b_y, "b_stride_y"), i32(b_z, "b_stride_z"), i32(b_r, "b_stride_r"),
                     i32(c_y, "c_stride_y"), i32(c_z, "c_stride_z"),
                     i32(bias_y, "bias_stride"), i32(red_per_z, "red_per_z"),
                     i32(red_total, "red_total"), np.int32(bias_mode), np.int32(bool(relu)),
                     np.float32(beta))
        bf16 = [is_bf16(d) for d in dtypes] if dtypes is not None else [False] * 3
        self.vec_a = _vector_static(vector and not bf16[0], lda, (a_y, a_z, a_r))
        self.vec_b = _vector_static(vector and not bf16[1], ldb, (b_y, b_z, b_r))
        self.no_bias = _no_bias(ctx, bf16)
        super().__init__(ctx, name, grid, block)
        self.address = array_address

    def args(self, a, b, c, bias=None):
        """The launch's argument tuple: ``gemm.fire(gemm.args(a, b, c, bias))`` launches."""
        address = self.address
        va = _ONE if self.vec_a and address(a) % 16 == 0 else _ZERO
        vb = _ONE if self.vec_b and address(b) % 16 == 0 else _ZERO
        # Without a bias the kernel never reads the bias pointer; pass A (read-only), not C
        # (written), so that no restrict-qualified pointer aliases the output (_no_bias).
        if bias is None:
            bias = a if self.no_bias is None else self.no_bias
        return (a, b, c, bias, *self.head, va, vb, *self.tail)

    def __call__(self, a, b, c, bias=None):
        self.fire(self.args(a, b, c, bias))


class SplitKGemm:
    """A GEMM with its K split (:func:`gemm_plan`), with the launch interface of
    :class:`SgemmLaunch`: the parts' sgemm launch writes ``plan.split`` partial products
    (M x N each, no epilogue) into the workspace, then ``sgemm_splitk_epilogue`` adds them in
    part order and applies bias, beta * out and ReLU once into ``out``. A bf16 ``out``
    (``dtypes``): the parts stay float32, the epilogue writes a float32 workspace and
    ``cast_to_bf16`` rounds it into ``out`` once (beta must be 0)."""
    __slots__ = ("plan", "parts", "reduce", "scalars", "workspace", "count", "rounding",
                 "no_bias")

    def __init__(self, ctx, plan, M, N, K, trans_a, trans_b, has_bias, bias_axis, relu, beta,
                 dtypes=None):
        kp, S, count = plan.k_part, plan.split, M * N
        lda, ldb = (M if trans_a else K), (K if trans_b else N)
        bf16_out = dtypes is not None and is_bf16(dtypes[2])
        if bf16_out and beta != 0.0:
            raise ValueError("sgemm: beta != 0 needs a float32 C")
        # Part z reads op(A)[:, z kp:] and op(B)[z kp:, :]: kp elements along a k-contiguous
        # row, kp rows otherwise.
        self.parts = SgemmLaunch(ctx, M, N, kp, lda, ldb, N, trans_a, trans_b, batch_z=S,
                                 a_z=kp * lda if trans_a else kp,
                                 b_z=kp if trans_b else kp * ldb, c_z=count, tile=plan.tile,
                                 k_last=plan.k_last,
                                 dtypes=None if dtypes is None else (*dtypes[:2], FLOAT32))
        self.reduce, lanes = _ordered_sum_launch(ctx, "sgemm_splitk_epilogue", count, S)
        self.rounding = plan_1d(ctx, "cast_to_bf16", count) if bf16_out else None
        self.no_bias = self.parts.no_bias
        bias_mode = _bias_mode(has_bias, bias_axis)
        self.scalars = (i32(count, "M * N"), np.int32(S), i32(count, "part stride"),
                        np.int32(lanes), i32(N, "N"), np.int32(bias_mode),
                        np.int32(bool(relu)), np.float32(beta))
        self.plan, self.workspace, self.count = plan, ctx.workspace, S * count
        i32(self.count, "split-K parts")

    @staticmethod
    def args(a, b, c, bias=None):
        return a, b, c, bias

    def fire(self, args):
        a, b, c, bias = args
        parts, gemm = self.workspace(SPLIT_WORKSPACE, self.count), self.parts
        gemm.fire(gemm.args(a, b, parts))
        out = c if self.rounding is None else self.workspace(SPLIT_OUT_WORKSPACE,
                                                             self.scalars[0])
        # Without a bias the kernel never reads the pointer: as in SgemmLaunch.args.
        if bias is None:
            bias = a if self.no_bias is None else self.no_bias
        self.reduce.fire((parts, out, bias, *self.scalars))
        if self.rounding is not None:
            self.rounding.fire((out, c, self.scalars[0]))

    def __call__(self, a, b, c, bias=None):
        self.fire((a, b, c, bias))


def sgemm(ctx, a, b, c, M, N, K, lda, ldb, ldc, trans_a=False, trans_b=False,
          batch_y=1, batch_z=1, a_y=0, a_z=0, a_r=0, b_y=0, b_z=0, b_r=0, c_y=0, c_z=0,
          red_per_z=1, red_total=None, bias=None, bias_y=0, bias_axis=1, relu=False,
          beta=0.0, *, tile=None, vector=True):
    """Plan and run one sgemm launch (one-off launches and tests; ops keep their
    :class:`SgemmLaunch`)."""
    SgemmLaunch(ctx, M, N, K, lda, ldb, ldc, trans_a, trans_b, batch_y, batch_z, a_y, a_z,
                a_r, b_y, b_z, b_r, c_y, c_z, red_per_z, red_total, bias is not None, bias_y,
                bias_axis, relu, beta, tile=tile, vector=vector)(a, b, c, bias)


def _ordered_sum_launch(ctx, name, count, nparts):
    """(launch, lanes) of an ordered sum (sgemm_ordered_sum in sgemm.cu) over ``count``
    outputs of ``nparts`` parts: ``lanes`` threads per output load the parts (a power of two,
    up to SUM_MAX_LANES and no more than the parts), one block per tile of
    ``threads / lanes`` outputs, the grid capped at ``ctx.max_blocks`` (the kernel strides)."""
    lanes = 1
    while lanes * 2 <= min(int(nparts), SUM_MAX_LANES):
        lanes *= 2
    threads = kernel_block(name)
    width = threads // lanes
    blocks = max(1, min(ceil_div(count, width), int(ctx.max_blocks)))
    # The kernel's output index is an int, including its last block stride.
    i32(int(count) + blocks * width, f"{name} outputs")
    return Launch(ctx, name, (blocks, 1, 1), (threads, 1, 1)), lanes


def plan_sum_partials(ctx, count, nparts, beta):
    """out (+)= the sum of ``nparts`` partial results of ``count`` floats, in part order
    (each output summed ((0 + p_0) + p_1) + ..., its parts loaded by several threads):
    ``launch((parts, out, *scalars))`` with the scalars returned alongside."""
    launch, lanes = _ordered_sum_launch(ctx, "sgemm_sum_partials", count, nparts)
    return launch, (i32(count, "count"), np.int32(nparts), i32(count, "part stride"),
                    np.float32(beta), np.int32(lanes))


def sum_partials(ctx, parts, out, count, nparts, beta):
    launch, scalars = plan_sum_partials(ctx, count, nparts, beta)
    launch.fire((parts, out, *scalars))


def _check_operands(a, b, trans_a, trans_b, bias, bias_axis):
    for arr, nm in ((a, "a"), (b, "b")):
        if arr.ndim != 2:
            raise ValueError(f"gemm: {nm} must be 2-D, got shape {tuple(arr.shape)}")
    M, K = (a.shape[1], a.shape[0]) if trans_a else a.shape
    Kb, N = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if K != Kb:
        raise ValueError(f"gemm: inner dimensions differ: op(a) is {M}x{K}, op(b) is {Kb}x{N}")
    if bias is not None and bias.shape != ((M,) if bias_axis == 0 else (N,)):
        raise ValueError(f"gemm: bias must have shape {(M,) if bias_axis == 0 else (N,)}")
    return M, N, K


def reference(a, b, trans_a=False, trans_b=False, bias=None, bias_axis=1, relu=False,
              c=None, beta=0.0):
    """The definition: op(a) @ op(b) (+ bias) (+ beta * c) (ReLU), in the inputs' dtype."""
    _check_operands(a, b, trans_a, trans_b, bias, bias_axis)
    if beta != 0.0 and c is None:
        raise ValueError("gemm reference: beta != 0 needs c")
    r = (a.T if trans_a else a) @ (b.T if trans_b else b)
    if bias is not None:
        r = r + (bias[:, None] if bias_axis == 0 else bias[None, :])
    if beta != 0.0:
        r = r + beta * c
    return np.maximum(r, 0) if relu else r


def plan_gemm(ctx, M, N, K, trans_a=False, trans_b=False, has_bias=False, bias_axis=1,
              relu=False, beta=0.0, *, tile=None, split=None, dtypes=None):
    """The launch of out = op(a) @ op(b) (+ bias) (+ beta * out) (ReLU) for 2-D row-major
    operands of these sizes (checked by the caller), as :func:`gemm_plan` decides: our SGEMM
    (an :class:`SgemmLaunch`, or a :class:`SplitKGemm` for a split K), or cuBLAS
    (``xp.matmul``, a :class:`HostGemm`) where the context says so. Each runs as
    ``gemm.fire(gemm.args(a, b, out, bias))`` or ``gemm(a, b, out, bias)``. ``tile`` /
    ``split`` override the plan's choices (tests). ``dtypes``: those of a, b, out (None:
    float32; bf16 ones: :data:`BF16_GEMMS`)."""
    gemm_io_suffix(trans_a, trans_b, dtypes, ctx.precision)   # refuses what no kernel runs
    if ctx.use_cublas:
        return cublas_gemm(ctx, M, N, trans_a, trans_b, bias_axis, relu, beta, dtypes)
    if M == 0 or N == 0:
        return HostGemm(lambda a, b, out, bias: None)
    plan = gemm_plan(M, N, K, trans_a, trans_b, tile=tile, split=split,
                     max_part_floats=int(ctx.workspace_bytes) // SPLIT_PARTS_SHARE // 4,
                     precision=ctx.precision, dtypes=dtypes)
    if plan.split > 1:
        return SplitKGemm(ctx, plan, M, N, K, trans_a, trans_b, has_bias, bias_axis, relu,
                          beta, dtypes)
    return SgemmLaunch(ctx, M, N, K, lda=M if trans_a else K, ldb=K if trans_b else N, ldc=N,
                       trans_a=trans_a, trans_b=trans_b, has_bias=has_bias,
                       bias_axis=bias_axis, relu=relu, beta=beta, tile=plan.tile,
                       dtypes=dtypes)


def gemm(ctx, a, b, trans_a=False, trans_b=False, bias=None, bias_axis=1, relu=False,
         out=None, beta=0.0):
    """C = op(a) @ op(b) (+ bias) (+ beta * out) (ReLU) for 2-D float32 C-contiguous device
    arrays, planned and run once. Returns C (``out`` if given)."""
    for arr, nm in ((a, "a"), (b, "b")):
        if arr.ndim != 2 or arr.dtype != np.float32 or not arr.flags.c_contiguous:
            raise ValueError(f"gemm: {nm} must be a 2-D C-contiguous float32 array")
    M, N, K = _check_operands(a, b, trans_a, trans_b, bias, bias_axis)
    # The kernel reads raw float32 memory: a float64 or strided bias/out would be misread.
    if bias is not None and (bias.dtype != np.float32 or not bias.flags.c_contiguous):
        raise ValueError("gemm: bias must be a C-contiguous float32 array")
    if out is None:
        if beta != 0.0:
            raise ValueError("gemm: beta != 0 needs out")
        out = ctx.empty((M, N), np.float32)
    elif (out.shape != (M, N) or out.dtype != np.float32
          or not out.flags.c_contiguous):
        raise ValueError(f"gemm: out must be a C-contiguous float32 ({M}, {N}) array")
    plan_gemm(ctx, M, N, K, trans_a, trans_b, bias is not None, bias_axis, relu,
              beta)(a, b, out, bias)
    return out
