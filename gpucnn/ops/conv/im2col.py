"""conv2d on the device: im2col (``kernels/im2col.cu``) + the SGEMM of :mod:`..gemm`
(``kernels/sgemm.cu``) + bias gradients (``kernels/conv_reduce.cu``), for ``cuda`` and ``emu``.

The column matrix of a chunk of ``nb`` images is ``cols[n, g]`` (K x P, K = Cg*kh*kw,
P = Ho*Wo) for each image n and group g, so:

* forward:  ``y[n, g] = W_g @ cols[n, g] (+ b_g, ReLU)``, one batched GEMM launch
  (grid y = group, z = image) writing straight into the NCHW output;
* dW:       ``dW_g (+)= sum_n dY[n, g] @ cols[n, g]^T``, one batched-reduce GEMM launch (the
  kernel loops over the chunk's images); when that gives too few blocks to fill the device
  the images are split over grid z into partial sums, then added in a fixed order;
* dX:       ``dcols[n, g] = W_g^T @ dY[n, g]`` into the same workspace, then col2im (gather);
* db:       a per-channel block reduction over N, Ho, Wo.

A 1x1, stride-1, unpadded convolution skips im2col: x itself is the column matrix (and dX is
written directly by the GEMM). The column workspace is bounded by ``ctx.workspace_bytes``
(the batch is processed in chunks of at least one image) and is one buffer kept on the
backend (``ctx.workspace``), reused by every layer and call.

``conv2d(ctx, g, relu, has_bias)`` and ``conv2d_backward(ctx, g, need_dx, need_dw)`` take the
device context and the checked geometry, work out every launch of every chunk once, and
return the run of one call (``run(x, w, b)``, ``run(dy, x, w)``).
"""
from __future__ import annotations

import numpy as np

from ...toolchain import kernel_block
from ...toolchain.limits import GRID_DIM_MAX
from ..gemm import HostGemm, SgemmLaunch, plan_sum_partials, sgemm_tile
from ..launch import Launch, ceil_div, i32, plan_1d
from ..storage import FLOAT32, io_kernel

__all__ = ["conv2d", "conv2d_backward", "conv_plan", "dw_split", "im2col_args",
           "bias_grad_plan", "DW_TARGET_BLOCKS", "WORKSPACE"]

# Below this many blocks the conv weight-gradient GEMM splits its image reduction over grid z
# (partial sums, added afterwards). A few waves of an H100/H200 (132 SMs); the backend
# attribute ``dw_target_blocks`` overrides it.
DW_TARGET_BLOCKS = 512
# The backend attribute holding the column workspace shared by every conv layer and call.
WORKSPACE = "_conv_ws"
# The split's partial sums may use at most this fraction of workspace_bytes.
_PARTS_FRACTION = 4


def conv_plan(ctx, g):
    """(direct, images_per_chunk): direct = x is its own column matrix (1x1 conv)."""
    direct = (g.kh == 1 and g.kw == 1 and g.sh == 1 and g.sw == 1
              and not (g.ph or g.pw or g.ph_end or g.pw_end))
    if direct:
        return True, min(g.N, GRID_DIM_MAX[2])  # images are grid z of the GEMMs
    per_image = g.C * g.kh * g.kw * g.Ho * g.Wo * 4
    return False, max(1, min(g.N, GRID_DIM_MAX[2], int(ctx.workspace_bytes) // per_image))


def im2col_args(g, nb):
    """The geometry arguments of the im2col and col2im kernels for a chunk of nb images."""
    # Only the top/left padding: the kernels bound-check the input and take Ho, Wo, so the
    # bottom/right padding of an asymmetric ('same') geometry needs no argument.
    return tuple(np.int32(v) for v in (nb, g.C, g.H, g.W, g.kh, g.kw, g.sh, g.sw, g.ph,
                                       g.pw, g.dh, g.dw, g.Ho, g.Wo))


def _im2col_plan(ctx, g, nb):
    """(launch, count, scalars) of im2col for a chunk of nb images: cols of the chunk's
    images in the shared workspace, (nb, G*K*P) floats."""
    count = nb * g.C * g.kh * g.kw * g.Ho * g.Wo
    i32(count, "im2col workspace size")
    launch = plan_1d(ctx, "im2col", nb * g.C * g.Ho * g.Wo,
                     large_ok=("x", "cols"))  # 64-bit plane offsets
    return launch, count, im2col_args(g, nb)


def bias_grad_plan(ctx, N, C, P, dtype=FLOAT32):
    """db[c] = sum of dy[n, c, p] over n < N, p < P (both conv algorithms use it):
    ``launch((dy, db, *scalars))``; dy of ``dtype``: float32, or bf16 bits (the implicit
    GEMM's bf16 activations: ``bias_grad_nchw_bf16io``, float32 sums and db)."""
    grid = (max(1, min(int(C), ctx.max_blocks)), 1, 1)
    i32(N * P, "bias_grad: N*Ho*Wo")
    name = io_kernel("bias_grad_nchw", dtype)
    launch = Launch(ctx, name, grid, (kernel_block(name), 1, 1))
    return launch, (np.int32(N), np.int32(C), np.int32(P))


def _chunks(ctx, g):
    """[(n0, n1, nb)] of the batch in chunks whose columns fit the workspace."""
    direct, step = conv_plan(ctx, g)
    return direct, [(n0, min(g.N, n0 + step), min(g.N, n0 + step) - n0)
                    for n0 in range(0, g.N, step)]


def conv2d(ctx, g, relu, has_bias):
    P, K, G, Fg = g.Ho * g.Wo, g.K, g.groups, g.Fg
    direct, chunks = _chunks(ctx, g)
    steps = []
    for n0, n1, nb in chunks:
        cols = None if direct else _im2col_plan(ctx, g, nb)
        if ctx.use_cublas:
            gemm = _cublas_forward(ctx, g, nb, relu)
        else:
            # y[n, g] = W_g (Fg x K) @ cols[n, g] (K x P): grid y = group, z = image.
            gemm = SgemmLaunch(ctx, Fg, P, K, lda=K, ldb=P, ldc=P, batch_y=G, batch_z=nb,
                               a_y=Fg * K, b_y=K * P, b_z=G * K * P, c_y=Fg * P, c_z=g.F * P,
                               has_bias=has_bias, bias_y=Fg, bias_axis=0, relu=relu)
        steps.append((n0, n1, cols, gemm))
    empty, workspace, ys = ctx.empty, ctx.workspace, g.y_shape

    def run(x, w, b):
        y = empty(ys, np.float32)
        for n0, n1, cols, gemm in steps:
            xs = x[n0:n1]
            if cols is not None:
                launch, count, scalars = cols
                c = workspace(WORKSPACE, count)
                launch.fire((xs, c, *scalars))
                xs = c
            gemm.fire(gemm.args(w, xs, y[n0:n1], b))
        return y
    return run


def _cublas_forward(ctx, g, nb, relu):
    """The forward GEMM of a chunk by cuBLAS (``xp.matmul``), for comparison benchmarks."""
    xp, G, Fg, K, P = ctx.xp, g.groups, g.Fg, g.K, g.Ho * g.Wo

    def gemm(w, cols, ys, b):
        out = xp.matmul(w.reshape(G, Fg, K), cols.reshape(nb, G, K, P))
        if b is not None:
            out += b.reshape(G, Fg, 1)
        if relu:
            xp.maximum(out, 0, out=out)
        ys[...] = out.reshape(ys.shape)
    return HostGemm(gemm)


def dw_split(ctx, g, nb):
    """(parts, images_per_part): the weight-gradient reduction over a chunk's nb images is
    split into parts (1 = no split) so that the launch has enough blocks to fill the device;
    the partial sums are then added in a fixed order."""
    t = sgemm_tile()
    blocks = ceil_div(g.Fg, t["BM"]) * ceil_div(g.K, t["BN"]) * g.groups
    target = int(getattr(ctx, "dw_target_blocks", DW_TARGET_BLOCKS))
    if nb <= 1 or blocks >= target:
        return 1, nb
    split = min(nb, ceil_div(target, blocks), GRID_DIM_MAX[2])
    cap = int(ctx.workspace_bytes) // _PARTS_FRACTION // (g.F * g.K * 4)
    split = max(1, min(split, cap))
    per = ceil_div(nb, split)
    return ceil_div(nb, per), per  # no empty parts


def conv2d_backward(ctx, g, need_dx=True, need_dw=True):
    P, K, G, Fg, F = g.Ho * g.Wo, g.K, g.groups, g.Fg, g.F
    direct, chunks = _chunks(ctx, g)
    bias = bias_grad_plan(ctx, g.N, F, P) if need_dw else None
    steps = []
    for n0, n1, nb in chunks:
        cols = None if direct else _im2col_plan(ctx, g, nb)
        dw = _dw_plan(ctx, g, nb, 0.0 if n0 == 0 else 1.0) if need_dw else None
        dx = None
        if need_dx:
            # dcols[n, g] = W_g^T (K x Fg) @ dY[n, g] (Fg x P), then col2im into dx. The
            # column workspace is free again (the dW GEMM has consumed cols).
            if ctx.use_cublas:
                gemm = _cublas_dcols(ctx, g, nb)
            else:
                gemm = SgemmLaunch(ctx, K, P, Fg, lda=K, ldb=P, ldc=P, trans_a=True,
                                   batch_y=G, batch_z=nb, a_y=Fg * K, b_y=Fg * P, b_z=F * P,
                                   c_y=K * P, c_z=G * K * P)
            col2im = None if direct else plan_1d(ctx, "col2im", nb * g.C * g.H * g.W,
                                                 large_ok=("cols",))
            dx = (gemm, col2im, im2col_args(g, nb))
        steps.append((n0, n1, cols, dw, dx))
    empty, workspace = ctx.empty, ctx.workspace
    xs_shape, ws_shape = g.x_shape, g.w_shape

    def run(dy, x, w, dw_out=None, db_out=None):
        dx = empty(xs_shape, np.float32) if need_dx else None
        dw = db = None
        if need_dw:
            dw = empty(ws_shape, np.float32) if dw_out is None else dw_out
            db = empty((F,), np.float32) if db_out is None else db_out
            launch, scalars = bias
            launch.fire((dy, db, *scalars))
        for n0, n1, cols, dw_step, dx_step in steps:
            dys = dy[n0:n1]
            if dw_step is not None:
                c = x[n0:n1]
                if cols is not None:
                    launch, count, scalars = cols
                    c = workspace(WORKSPACE, count)
                    launch.fire((x[n0:n1], c, *scalars))
                dw_step(dys, c, dw)
            if dx_step is not None:
                gemm, col2im, scalars = dx_step
                dxs = dx[n0:n1]
                dcols = dxs if col2im is None else workspace(WORKSPACE, cols[1])
                gemm.fire(gemm.args(w, dys, dcols))
                if col2im is not None:
                    col2im.fire((dcols, dxs, *scalars))
        return dx, dw, db
    return run


def _cublas_dcols(ctx, g, nb):
    xp, G, Fg, K, P = ctx.xp, g.groups, g.Fg, g.K, g.Ho * g.Wo

    def gemm(w, dys, dcols, _bias):
        out = xp.matmul(w.reshape(G, Fg, K).transpose(0, 2, 1), dys.reshape(nb, G, Fg, P))
        dcols.reshape(out.shape)[...] = out
    return HostGemm(gemm)


def _dw_plan(ctx, g, nb, beta):
    """``run(dys, cols, dw)``: dW_g (+)= sum_n dY[n, g] (Fg x P) @ cols[n, g]^T (P x K) over
    a chunk of nb images; beta 0 overwrites dw (first chunk), 1 accumulates."""
    P, K, G, Fg, F = g.Ho * g.Wo, g.K, g.groups, g.Fg, g.F
    if ctx.use_cublas:
        xp = ctx.xp

        def cublas(dys, cols, dw):
            d4 = dys.reshape(nb, G, Fg, P).transpose(1, 2, 0, 3).reshape(G, Fg, nb * P)
            c4 = cols.reshape(nb, G, K, P).transpose(1, 0, 3, 2).reshape(G, nb * P, K)
            part = xp.matmul(d4, c4).reshape(g.w_shape)
            if beta:
                dw += part
            else:
                dw[...] = part
        return cublas
    split, per = dw_split(ctx, g, nb)
    gemm = SgemmLaunch(ctx, Fg, K, P, lda=P, ldb=P, ldc=K, trans_b=True,
                       batch_y=G, batch_z=split, a_y=Fg * P, a_z=per * F * P, a_r=F * P,
                       b_y=K * P, b_z=per * G * K * P, b_r=G * K * P, c_y=Fg * K,
                       c_z=0 if split == 1 else F * K, red_per_z=per, red_total=nb,
                       beta=beta if split == 1 else 0.0)
    if split == 1:
        return lambda dys, cols, dw: gemm(dys, cols, dw)
    add, scalars = plan_sum_partials(ctx, F * K, split, beta)
    workspace = ctx.workspace

    def partial_sums(dys, cols, dw):
        parts = workspace("_conv_parts", split * F * K)
        gemm(dys, cols, parts)
        add.fire((parts, dw, *scalars))
    return partial_sums
