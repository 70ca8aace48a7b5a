"""ConvKernels: the device backend's convolution and fully connected layers.

Kernels: ``kernels/im2col.cu`` (im2col, col2im as a gather), ``kernels/sgemm.cu`` (a tiled,
register-blocked, batched SGEMM with a bias/ReLU/accumulate epilogue, plus
sgemm_sum_partials) and ``kernels/conv_reduce.cu`` (bias gradients). A mixin for
:class:`~gpucnn.backends.device.DeviceBackend`: it relies on ``self.kernel(name)``,
``self.empty(shape, dtype)``, ``self.xp``, ``self.max_blocks`` and ``self.workspace_bytes``.

Convolution = im2col + GEMM, per chunk of images. The column matrix of a chunk of ``nb``
images is ``cols[n, g]`` (K x P, K = Cg*kh*kw, P = Ho*Wo) for each image n and group g, so:

* forward:  ``y[n, g] = W_g @ cols[n, g] (+ b_g, ReLU)``, one batched GEMM launch
  (grid y = group, z = image) writing straight into the NCHW output;
* dW:       ``dW_g (+)= sum_n dY[n, g] @ cols[n, g]^T``, one batched-reduce GEMM launch (the
  kernel loops over the chunk's images); when that gives too few blocks to fill the device
  the images are split over grid z into partial sums, then added in a fixed order;
* dX:       ``dcols[n, g] = W_g^T @ dY[n, g]`` into the same workspace, then col2im (gather);
* db:       a per-channel block reduction over N, Ho, Wo.

``need_dx=False`` skips the dX GEMM and col2im; ``need_dw=False`` skips im2col, the dW GEMM
and db (the skipped gradients are returned as None).

A 1x1, stride-1, unpadded convolution skips im2col: x itself is the column matrix (and dX is
written directly by the GEMM).

The column workspace is bounded by ``self.workspace_bytes`` (the batch is processed in
chunks; always at least one image per chunk) and is one buffer kept on the backend, grown
when a layer needs more, reused by every layer and call.

All launch geometry (grids, blocks, tile sizes) is computed here, in the ``_launch_*``
helpers and :func:`sgemm_tile`, for both ``cuda`` and ``emu``. The SGEMM tile constants are
read from the ``#define``s of ``kernels/sgemm.cu`` itself, so the two cannot disagree.

With ``self.use_cublas = True`` on the ``cuda`` backend, every GEMM here is done by
``xp.matmul`` (cuBLAS) instead of our kernel, for comparison benchmarks; im2col, col2im and
the reductions stay ours.
"""
from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

from .launch import ceil_div, grid_1d

__all__ = ["ConvKernels", "sgemm_tile", "parse_defines", "REDUCE_THREADS"]

_INT32_MAX = 2**31 - 1
# Grid y and z limits of a CUDA launch.
_GRID_YZ_MAX = 65535
# Threads per block of bias_grad_nchw: must equal REDUCE_THREADS in kernels/conv_reduce.cu
# (checked against the file by the tests, like the SGEMM tile).
REDUCE_THREADS = 256
# Below this many blocks the conv weight-gradient GEMM splits its image reduction over grid z
# (partial sums, added afterwards). A few waves of an H100/H200 (132 SMs); the instance
# attribute ``dw_target_blocks`` overrides it.
DW_TARGET_BLOCKS = 512
# The split's partial sums may use at most this fraction of workspace_bytes.
_PARTS_FRACTION = 4


def parse_defines(text, prefix):
    """{NAME: int} for every ``#define PREFIX_NAME <integer>`` line of a CUDA source."""
    out = {}
    for m in re.finditer(rf"^\s*#define\s+{prefix}_(\w+)\s+(\d+)\s*(?://.*)?$", text, re.M):
        out[m.group(1)] = int(m.group(2))
    return out


@lru_cache(maxsize=None)
def sgemm_tile():
    """The SGEMM tile constants, read from kernels/sgemm.cu and checked for consistency:
    {BM, BN, BK, TM, TN, THREADS, PAD}."""
    from .device import kernel_dir  # device.py imports this module: import lazily
    t = parse_defines((kernel_dir() / "sgemm.cu").read_text(), "SGEMM")
    need = ("BM", "BN", "BK", "TM", "TN", "THREADS")
    missing = [k for k in need if k not in t]
    if missing:
        raise RuntimeError(f"kernels/sgemm.cu lacks #define SGEMM_{missing[0]}")
    if (t["BM"] // t["TM"]) * (t["BN"] // t["TN"]) != t["THREADS"] or t["BM"] % t["TM"] \
            or t["BN"] % t["TN"]:
        raise RuntimeError(f"kernels/sgemm.cu: SGEMM tile {t} is inconsistent: THREADS must be "
                           f"(BM/TM)*(BN/TN)")
    if (t["BM"] * t["BK"]) % t["THREADS"] or (t["BN"] * t["BK"]) % t["THREADS"]:
        raise RuntimeError(f"kernels/sgemm.cu: SGEMM tile {t}: BM*BK and BN*BK must be "
                           f"multiples of THREADS")
    return dict(t)


def _i32(value, what):
    value = int(value)
    if not -_INT32_MAX <= value <= _INT32_MAX:
        raise ValueError(f"{what} = {value} does not fit the device kernels' int32 indexing "
                         f"(use a smaller batch or workspace)")
    return np.int32(value)


class ConvKernels:
    # ---- launch geometry (the only place grids/blocks of these kernels are computed) -------
    def _launch_grid_stride(self, name, n, *args):
        """A grid-stride elementwise kernel over ``n`` elements (im2col, col2im, ...)."""
        grid, block = grid_1d(n, self.max_blocks)
        if n + grid[0] * block[0] > _INT32_MAX:
            raise ValueError(f"{name}: {n} elements is too many for the device kernels")
        self.kernel(name)(grid, block, args)

    @staticmethod
    def sgemm_launch(M, N, batch_y=1, batch_z=1):
        """(grid, block) of an sgemm launch computing ``batch_y * batch_z`` M x N products."""
        t = sgemm_tile()
        tiles = ceil_div(M, t["BM"]) * ceil_div(N, t["BN"])
        if batch_y > _GRID_YZ_MAX or batch_z > _GRID_YZ_MAX:
            raise ValueError(f"sgemm: batch ({batch_y}, {batch_z}) exceeds the grid limit "
                             f"{_GRID_YZ_MAX}")
        return (max(1, tiles), max(1, int(batch_y)), max(1, int(batch_z))), (t["THREADS"], 1, 1)

    def _launch_bias_grad_nchw(self, dy, db, N, C, P):
        grid = (max(1, min(int(C), self.max_blocks)), 1, 1)
        _i32(N * P, "bias_grad: N*Ho*Wo")
        self.kernel("bias_grad_nchw")(grid, (REDUCE_THREADS, 1, 1),
                                      (dy, db, np.int32(N), np.int32(C), np.int32(P)))

    def _use_cublas(self):
        return bool(getattr(self, "use_cublas", False)) and self.xp is not np

    # ---- the SGEMM launcher ----------------------------------------------------------------
    def _sgemm(self, a, b, c, M, N, K, lda, ldb, ldc, trans_a=False, trans_b=False,
               batch_y=1, batch_z=1, a_y=0, a_z=0, a_r=0, b_y=0, b_z=0, b_r=0, c_y=0, c_z=0,
               red_per_z=1, red_total=None, bias=None, bias_y=0, bias_axis=1, relu=False,
               beta=0.0):
        """One launch of the ``sgemm`` kernel (see kernels/sgemm.cu for the semantics of
        every argument). ``a``, ``b``, ``c`` are arrays whose data start at the first matrix;
        ``bias_axis`` 0: one bias per row of C (length M), 1: one per column (length N)."""
        if red_total is None:
            red_total = red_per_z * batch_z
        grid, block = self.sgemm_launch(M, N, batch_y, batch_z)
        bias_mode = 0 if bias is None else (1 if bias_axis == 0 else 2)
        args = (a, b, c, c if bias is None else bias,
                _i32(M, "M"), _i32(N, "N"), _i32(K, "K"),
                _i32(lda, "lda"), _i32(ldb, "ldb"), _i32(ldc, "ldc"),
                np.int32(bool(trans_a)), np.int32(bool(trans_b)),
                _i32(a_y, "a_stride_y"), _i32(a_z, "a_stride_z"), _i32(a_r, "a_stride_r"),
                _i32(b_y, "b_stride_y"), _i32(b_z, "b_stride_z"), _i32(b_r, "b_stride_r"),
                _i32(c_y, "c_stride_y"), _i32(c_z, "c_stride_z"), _i32(bias_y, "bias_stride"),
                _i32(red_per_z, "red_per_z"), _i32(red_total, "red_total"),
                np.int32(bias_mode), np.int32(bool(relu)), np.float32(beta))
        # Each operand's in-matrix offsets are int32 in the kernel.
        _i32((M if not trans_a else K) * lda, "A extent")
        _i32((K if not trans_b else N) * ldb, "B extent")
        _i32(M * ldc, "C extent")
        self.kernel("sgemm")(grid, block, args)

    def gemm(self, a, b, trans_a=False, trans_b=False, bias=None, bias_axis=1, relu=False,
             out=None, beta=0.0):
        """C = op(a) @ op(b) (+ bias) (+ beta * out) (ReLU) for 2-D float32 C-contiguous
        arrays; op transposes when trans_* is set. ``bias_axis`` 0: bias has one value per
        row of C (length M), 1: per column (length N). Returns C (``out`` if given)."""
        xp = self.xp
        for arr, nm in ((a, "a"), (b, "b")):
            if arr.ndim != 2 or arr.dtype != np.float32 or not arr.flags.c_contiguous:
                raise ValueError(f"gemm: {nm} must be a 2-D C-contiguous float32 array")
        M, K = (a.shape[1], a.shape[0]) if trans_a else a.shape
        Kb, N = (b.shape[1], b.shape[0]) if trans_b else b.shape
        if K != Kb:
            raise ValueError(f"gemm: inner dimensions differ: op(a) is {M}x{K}, op(b) is "
                             f"{Kb}x{N}")
        if bias is not None and bias.shape != ((M,) if bias_axis == 0 else (N,)):
            raise ValueError(f"gemm: bias must have shape {(M,) if bias_axis == 0 else (N,)}")
        if out is None:
            if beta != 0.0:
                raise ValueError("gemm: beta != 0 needs out")
            out = self.empty((M, N), np.float32)
        elif out.shape != (M, N) or not out.flags.c_contiguous:
            raise ValueError(f"gemm: out must be a C-contiguous ({M}, {N}) array")
        if self._use_cublas():
            op_a, op_b = (a.T if trans_a else a), (b.T if trans_b else b)
            if beta == 0.0:
                r = xp.matmul(op_a, op_b, out=out)
            else:
                r = xp.matmul(op_a, op_b)
            if bias is not None:
                r += bias[:, None] if bias_axis == 0 else bias[None, :]
            if beta != 0.0:
                r += np.float32(beta) * out
            if relu:
                xp.maximum(r, 0, out=r)
            if r is not out:
                out[...] = r
            return out
        if M == 0 or N == 0:
            return out
        self._sgemm(a, b, out, M, N, K, lda=a.shape[1], ldb=b.shape[1], ldc=N,
                    trans_a=trans_a, trans_b=trans_b, bias=bias, bias_axis=bias_axis,
                    relu=relu, beta=beta)
        return out

    # ---- workspace -------------------------------------------------------------------------
    def _workspace(self, attr, count):
        """A float32 buffer of at least ``count`` elements, kept on the backend as ``attr``
        and reused (grown, never shrunk, when a layer needs more)."""
        buf = getattr(self, attr, None)
        if buf is None or buf.size < count:
            buf = None
            setattr(self, attr, None)  # free the old one before allocating
            buf = self.empty((int(count),), np.float32)
            setattr(self, attr, buf)
        return buf[:count]

    def _conv_plan(self, g):
        """(direct, images_per_chunk): direct = x is its own column matrix (1x1 conv)."""
        direct = (g.kh == 1 and g.kw == 1 and g.sh == 1 and g.sw == 1 and g.ph == 0
                  and g.pw == 0)
        if direct:
            return True, min(g.N, _GRID_YZ_MAX)  # images are grid z of the GEMMs
        per_image = g.C * g.kh * g.kw * g.Ho * g.Wo * 4
        return False, max(1, min(g.N, _GRID_YZ_MAX, int(self.workspace_bytes) // per_image))

    def _im2col(self, xs, g, nb):
        """cols of images xs (nb of them) in the shared workspace: (nb, G*K*P) floats."""
        P = g.Ho * g.Wo
        cols = self._workspace("_conv_ws", nb * g.C * g.kh * g.kw * P)
        _i32(cols.size, "im2col workspace size")
        self._launch_grid_stride("im2col", nb * g.C * P, xs, cols, *self._geom_args(g, nb))
        return cols

    @staticmethod
    def _geom_args(g, nb):
        return tuple(np.int32(v) for v in (nb, g.C, g.H, g.W, g.kh, g.kw, g.sh, g.sw, g.ph,
                                           g.pw, g.dh, g.dw, g.Ho, g.Wo))

    # ---- convolution -----------------------------------------------------------------------
    def _conv2d(self, x, w, b, g, relu):
        y = self.empty(g.y_shape, np.float32)
        P, K, G, Fg = g.Ho * g.Wo, g.K, g.groups, g.Fg
        direct, step = self._conv_plan(g)
        for n0 in range(0, g.N, step):
            n1 = min(g.N, n0 + step)
            nb = n1 - n0
            cols = x[n0:n1] if direct else self._im2col(x[n0:n1], g, nb)
            ys = y[n0:n1]
            if self._use_cublas():
                out = self.xp.matmul(w.reshape(G, Fg, K), cols.reshape(nb, G, K, P))
                if b is not None:
                    out += b.reshape(G, Fg, 1)
                if relu:
                    self.xp.maximum(out, 0, out=out)
                ys[...] = out.reshape(ys.shape)
                continue
            # y[n, g] = W_g (Fg x K) @ cols[n, g] (K x P): grid y = group, z = image.
            self._sgemm(w, cols, ys, Fg, P, K, lda=K, ldb=P, ldc=P,
                        batch_y=G, batch_z=nb, a_y=Fg * K, b_y=K * P, b_z=G * K * P,
                        c_y=Fg * P, c_z=g.F * P, bias=b, bias_y=Fg, bias_axis=0, relu=relu)
        return y

    def _dw_split(self, g, nb):
        """(parts, images_per_part): the weight-gradient reduction over a chunk's nb images
        is split into parts (1 = no split) so that the launch has enough blocks to fill the
        device; the partial sums are then added in a fixed order."""
        t = sgemm_tile()
        blocks = ceil_div(g.Fg, t["BM"]) * ceil_div(g.K, t["BN"]) * g.groups
        target = int(getattr(self, "dw_target_blocks", DW_TARGET_BLOCKS))
        if nb <= 1 or blocks >= target:
            return 1, nb
        split = min(nb, ceil_div(target, blocks), _GRID_YZ_MAX)
        cap = int(self.workspace_bytes) // _PARTS_FRACTION // (g.F * g.K * 4)
        split = max(1, min(split, cap))
        per = ceil_div(nb, split)
        return ceil_div(nb, per), per  # no empty parts

    def _conv2d_backward(self, dy, x, w, g, need_dx=True, need_dw=True):
        xp = self.xp
        dx = self.empty(g.x_shape, np.float32) if need_dx else None
        dw = self.empty(g.w_shape, np.float32) if need_dw else None
        db = self.empty((g.F,), np.float32) if need_dw else None
        P, K, G, Fg, F = g.Ho * g.Wo, g.K, g.groups, g.Fg, g.F
        if need_dw:
            self._launch_bias_grad_nchw(dy, db, g.N, F, P)
        if not (need_dx or need_dw):
            return dx, dw, db
        direct, step = self._conv_plan(g)
        cublas = self._use_cublas()
        for n0 in range(0, g.N, step):
            n1 = min(g.N, n0 + step)
            nb = n1 - n0
            dys = dy[n0:n1]
            if need_dw:
                beta = 0.0 if n0 == 0 else 1.0
                cols = x[n0:n1] if direct else self._im2col(x[n0:n1], g, nb)
                self._conv_dw(dys, cols, dw, g, nb, beta, cublas)
            if need_dx:
                # dcols[n, g] = W_g^T (K x Fg) @ dY[n, g] (Fg x P), then col2im into dx. The
                # column workspace is free again (the dW GEMM above has consumed cols).
                if direct:
                    dcols = dx[n0:n1]
                else:
                    dcols = self._workspace("_conv_ws", nb * g.C * g.kh * g.kw * P)
                if cublas:
                    out = xp.matmul(w.reshape(G, Fg, K).transpose(0, 2, 1),
                                    dys.reshape(nb, G, Fg, P))
                    dcols.reshape(out.shape)[...] = out
                else:
                    self._sgemm(w, dys, dcols, K, P, Fg, lda=K, ldb=P, ldc=P, trans_a=True,
                                batch_y=G, batch_z=nb, a_y=Fg * K, b_y=Fg * P, b_z=F * P,
                                c_y=K * P, c_z=G * K * P)
                if not direct:
                    self._launch_grid_stride("col2im", nb * g.C * g.H * g.W, dcols, dx[n0:n1],
                                             *self._geom_args(g, nb))
        return dx, dw, db

    def _conv_dw(self, dys, cols, dw, g, nb, beta, cublas):
        """dW_g (+)= sum_n dY[n, g] (Fg x P) @ cols[n, g]^T (P x K) over a chunk of nb
        images; beta 0 overwrites dw (first chunk), 1 accumulates."""
        P, K, G, Fg, F = g.Ho * g.Wo, g.K, g.groups, g.Fg, g.F
        if cublas:
            xp = self.xp
            d4 = dys.reshape(nb, G, Fg, P).transpose(1, 2, 0, 3).reshape(G, Fg, nb * P)
            c4 = cols.reshape(nb, G, K, P).transpose(1, 0, 3, 2).reshape(G, nb * P, K)
            part = xp.matmul(d4, c4).reshape(g.w_shape)
            if beta:
                dw += part
            else:
                dw[...] = part
            return
        split, per = self._dw_split(g, nb)
        if split == 1:
            target, c_z = dw, 0
        else:
            target, c_z = self._workspace("_conv_parts", split * F * K), F * K
        self._sgemm(dys, cols, target, Fg, K, P, lda=P, ldb=P, ldc=K, trans_b=True,
                    batch_y=G, batch_z=split, a_y=Fg * P, a_z=per * F * P, a_r=F * P,
                    b_y=K * P, b_z=per * G * K * P, b_r=G * K * P, c_y=Fg * K, c_z=c_z,
                    red_per_z=per, red_total=nb, beta=beta if split == 1 else 0.0)
        if split > 1:
            self._launch_grid_stride("sgemm_sum_partials", F * K, target, dw,
                                     _i32(F * K, "F*K"), np.int32(split), _i32(F * K, "F*K"),
                                     np.float32(beta))

    # ---- fully connected -------------------------------------------------------------------
    def _linear(self, x, w, b, relu):
        # y (B x out) = x (B x in) @ w^T (in x out) + b (one per column)
        return self.gemm(x, w, trans_b=True, bias=b, bias_axis=1, relu=relu)

    def _linear_backward(self, dy, x, w):
        dx = self.gemm(dy, w)                  # (B x out) @ (out x in)
        dw = self.gemm(dy, x, trans_a=True)    # (out x B) @ (B x in)
        rows, cols = dy.shape
        db = self.empty((cols,), np.float32)
        self._launch_grid_stride("bias_grad_rows", cols, dy, db, _i32(rows, "rows"),
                                 _i32(cols, "cols"))
        return dx, dw, db
