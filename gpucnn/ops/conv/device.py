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
written directly by the GEMM). The column workspace is bounded by ``dev.workspace_bytes``
(the batch is processed in chunks of at least one image) and is one buffer kept on the
backend (``dev.workspace``), reused by every layer and call.

``dev`` is a :class:`~gpucnn.backends.device.DeviceBackend`; arguments arrive checked.
"""
from __future__ import annotations

import numpy as np

from ...toolchain import kernel_block
from ...toolchain.limits import GRID_DIM_MAX
from ..gemm import sgemm, sgemm_tile, sum_partials
from ..launch import ceil_div, i32, launch_1d

__all__ = ["conv2d", "conv2d_backward", "conv_plan", "dw_split", "im2col_args", "bias_grad",
           "DW_TARGET_BLOCKS", "WORKSPACE"]

# Below this many blocks the conv weight-gradient GEMM splits its image reduction over grid z
# (partial sums, added afterwards). A few waves of an H100/H200 (132 SMs); the backend
# attribute ``dw_target_blocks`` overrides it.
DW_TARGET_BLOCKS = 512
# The backend attribute holding the column workspace shared by every conv layer and call.
WORKSPACE = "_conv_ws"
# The split's partial sums may use at most this fraction of workspace_bytes.
_PARTS_FRACTION = 4


def conv_plan(dev, g):
    """(direct, images_per_chunk): direct = x is its own column matrix (1x1 conv)."""
    direct = (g.kh == 1 and g.kw == 1 and g.sh == 1 and g.sw == 1
              and not (g.ph or g.pw or g.ph_end or g.pw_end))
    if direct:
        return True, min(g.N, GRID_DIM_MAX[2])  # images are grid z of the GEMMs
    per_image = g.C * g.kh * g.kw * g.Ho * g.Wo * 4
    return False, max(1, min(g.N, GRID_DIM_MAX[2], int(dev.workspace_bytes) // per_image))


def im2col_args(g, nb):
    """The geometry arguments of the im2col and col2im kernels for a chunk of nb images."""
    # Only the top/left padding: the kernels bound-check the input and take Ho, Wo, so the
    # bottom/right padding of an asymmetric ('same') geometry needs no argument.
    return tuple(np.int32(v) for v in (nb, g.C, g.H, g.W, g.kh, g.kw, g.sh, g.sw, g.ph,
                                       g.pw, g.dh, g.dw, g.Ho, g.Wo))


def _im2col(dev, xs, g, nb):
    """cols of images xs (nb of them) in the shared workspace: (nb, G*K*P) floats."""
    P = g.Ho * g.Wo
    cols = dev.workspace(WORKSPACE, nb * g.C * g.kh * g.kw * P)
    i32(cols.size, "im2col workspace size")
    launch_1d(dev, "im2col", nb * g.C * P, xs, cols, *im2col_args(g, nb),
              large_ok=("x", "cols"))  # 64-bit plane offsets
    return cols


def bias_grad(dev, dy, db, N, C, P):
    """db[c] = sum of dy[n, c, p] over n < N, p < P (both conv algorithms use it)."""
    grid = (max(1, min(int(C), dev.max_blocks)), 1, 1)
    i32(N * P, "bias_grad: N*Ho*Wo")
    dev.kernel("bias_grad_nchw")(grid, (kernel_block("bias_grad_nchw"), 1, 1),
                                 (dy, db, np.int32(N), np.int32(C), np.int32(P)))


def conv2d(dev, x, w, b, g, relu):
    y = dev.empty(g.y_shape, np.float32)
    P, K, G, Fg = g.Ho * g.Wo, g.K, g.groups, g.Fg
    direct, step = conv_plan(dev, g)
    for n0 in range(0, g.N, step):
        n1 = min(g.N, n0 + step)
        nb = n1 - n0
        cols = x[n0:n1] if direct else _im2col(dev, x[n0:n1], g, nb)
        ys = y[n0:n1]
        if dev.use_cublas:
            out = dev.xp.matmul(w.reshape(G, Fg, K), cols.reshape(nb, G, K, P))
            if b is not None:
                out += b.reshape(G, Fg, 1)
            if relu:
                dev.xp.maximum(out, 0, out=out)
            ys[...] = out.reshape(ys.shape)
            continue
        # y[n, g] = W_g (Fg x K) @ cols[n, g] (K x P): grid y = group, z = image.
        sgemm(dev, w, cols, ys, Fg, P, K, lda=K, ldb=P, ldc=P,
              batch_y=G, batch_z=nb, a_y=Fg * K, b_y=K * P, b_z=G * K * P,
              c_y=Fg * P, c_z=g.F * P, bias=b, bias_y=Fg, bias_axis=0, relu=relu)
    return y


def dw_split(dev, g, nb):
    """(parts, images_per_part): the weight-gradient reduction over a chunk's nb images is
    split into parts (1 = no split) so that the launch has enough blocks to fill the device;
    the partial sums are then added in a fixed order."""
    t = sgemm_tile()
    blocks = ceil_div(g.Fg, t["BM"]) * ceil_div(g.K, t["BN"]) * g.groups
    target = int(getattr(dev, "dw_target_blocks", DW_TARGET_BLOCKS))
    if nb <= 1 or blocks >= target:
        return 1, nb
    split = min(nb, ceil_div(target, blocks), GRID_DIM_MAX[2])
    cap = int(dev.workspace_bytes) // _PARTS_FRACTION // (g.F * g.K * 4)
    split = max(1, min(split, cap))
    per = ceil_div(nb, split)
    return ceil_div(nb, per), per  # no empty parts


def conv2d_backward(dev, dy, x, w, g, need_dx=True, need_dw=True):
    xp = dev.xp
    dx = dev.empty(g.x_shape, np.float32) if need_dx else None
    dw = dev.empty(g.w_shape, np.float32) if need_dw else None
    db = dev.empty((g.F,), np.float32) if need_dw else None
    P, K, G, Fg, F = g.Ho * g.Wo, g.K, g.groups, g.Fg, g.F
    if need_dw:
        bias_grad(dev, dy, db, g.N, F, P)
    if not (need_dx or need_dw):
        return dx, dw, db
    direct, step = conv_plan(dev, g)
    for n0 in range(0, g.N, step):
        n1 = min(g.N, n0 + step)
        nb = n1 - n0
        dys = dy[n0:n1]
        if need_dw:
            beta = 0.0 if n0 == 0 else 1.0
            cols = x[n0:n1] if direct else _im2col(dev, x[n0:n1], g, nb)
            _conv_dw(dev, dys, cols, dw, g, nb, beta)
        if need_dx:
            # dcols[n, g] = W_g^T (K x Fg) @ dY[n, g] (Fg x P), then col2im into dx. The
            # column workspace is free again (the dW GEMM above has consumed cols).
            if direct:
                dcols = dx[n0:n1]
            else:
                dcols = dev.workspace(WORKSPACE, nb * g.C * g.kh * g.kw * P)
            if dev.use_cublas:
                out = xp.matmul(w.reshape(G, Fg, K).transpose(0, 2, 1),
                                dys.reshape(nb, G, Fg, P))
                dcols.reshape(out.shape)[...] = out
            else:
                sgemm(dev, w, dys, dcols, K, P, Fg, lda=K, ldb=P, ldc=P, trans_a=True,
                      batch_y=G, batch_z=nb, a_y=Fg * K, b_y=Fg * P, b_z=F * P,
                      c_y=K * P, c_z=G * K * P)
            if not direct:
                launch_1d(dev, "col2im", nb * g.C * g.H * g.W, dcols, dx[n0:n1],
                          *im2col_args(g, nb), large_ok=("cols",))
    return dx, dw, db


def _conv_dw(dev, dys, cols, dw, g, nb, beta):
    """dW_g (+)= sum_n dY[n, g] (Fg x P) @ cols[n, g]^T (P x K) over a chunk of nb images;
    beta 0 overwrites dw (first chunk), 1 accumulates."""
    P, K, G, Fg, F = g.Ho * g.Wo, g.K, g.groups, g.Fg, g.F
    if dev.use_cublas:
        d4 = dys.reshape(nb, G, Fg, P).transpose(1, 2, 0, 3).reshape(G, Fg, nb * P)
        c4 = cols.reshape(nb, G, K, P).transpose(1, 0, 3, 2).reshape(G, nb * P, K)
        part = dev.xp.matmul(d4, c4).reshape(g.w_shape)
        if beta:
            dw += part
        else:
            dw[...] = part
        return
    split, per = dw_split(dev, g, nb)
    if split == 1:
        target, c_z = dw, 0
    else:
        target, c_z = dev.workspace("_conv_parts", split * F * K), F * K
    sgemm(dev, dys, cols, target, Fg, K, P, lda=P, ldb=P, ldc=K, trans_b=True,
          batch_y=G, batch_z=split, a_y=Fg * P, a_z=per * F * P, a_r=F * P,
          b_y=K * P, b_z=per * G * K * P, b_r=G * K * P, c_y=Fg * K, c_z=c_z,
          red_per_z=per, red_total=nb, beta=beta if split == 1 else 0.0)
    if split > 1:
        sum_partials(dev, target, dw, F * K, split, beta)
