"""Equivalence tests of the device convolution / GEMM path (kernels/im2col.cu, sgemm.cu,
conv_reduce.cu; gpucnn/backends/device_conv.py) against the NumPy backend in float64.

Every test taking ``device_backend`` runs on the emulator in three thread orders (or on a GPU
with --device-backend cuda). Outputs are poisoned before the kernels write them (emu checks).
"""
import numpy as np
import pytest

from gpucnn.backends import device_conv
from gpucnn.backends.device import kernel_dir
from gpucnn.backends.device_conv import REDUCE_THREADS, parse_defines, sgemm_tile
from gpucnn.testing import assert_close, randn

TOL = 1e-5
TOL_LARGE_K = 1e-4


def f64(*arrays):
    return tuple(np.asarray(a, dtype=np.float64) for a in arrays)


def dev(B, *arrays):
    return tuple(B.asarray(a) for a in arrays)


def host(B, *arrays):
    return tuple(B.to_numpy(a) for a in arrays)


# ---- constants shared between Python and the .cu files -----------------------------------------
def test_tile_constants_match_sources():
    t = sgemm_tile()
    src = parse_defines((kernel_dir() / "sgemm.cu").read_text(), "SGEMM")
    for k in ("BM", "BN", "BK", "TM", "TN", "THREADS"):
        assert t[k] == src[k]
    assert t["THREADS"] == (t["BM"] // t["TM"]) * (t["BN"] // t["TN"])
    red = parse_defines((kernel_dir() / "conv_reduce.cu").read_text(), "REDUCE")
    assert red["THREADS"] == REDUCE_THREADS
    grid, block = device_conv.ConvKernels.sgemm_launch(65, 129, 2, 3)
    assert grid == (2 * 3, 2, 3) and block == (t["THREADS"], 1, 1)


# ---- GEMM --------------------------------------------------------------------------------------
GEMM_SHAPES = [(1, 1, 1), (17, 33, 65), (64, 64, 64), (70, 3, 129)]
TRANS = [(False, False), (True, False), (False, True), (True, True)]


def _operands(rng, M, N, K, ta, tb):
    a = randn(rng, *((K, M) if ta else (M, K)))
    b = randn(rng, *((N, K) if tb else (K, N)))
    a64, b64 = f64(a, b)
    ref = (a64.T if ta else a64) @ (b64.T if tb else b64)
    return a, b, ref


@pytest.mark.parametrize("ta,tb", TRANS, ids=["NN", "TN", "NT", "TT"])
@pytest.mark.parametrize("M,N,K", GEMM_SHAPES, ids=lambda s: str(s))
def test_gemm(device_backend, rng, M, N, K, ta, tb):
    B = device_backend
    a, b, ref = _operands(rng, M, N, K, ta, tb)
    da, db_ = dev(B, a, b)
    (out,) = host(B, B.gemm(da, db_, trans_a=ta, trans_b=tb))
    assert out.dtype == np.float32
    assert_close(out, ref, TOL, f"gemm {M}x{N}x{K} trans=({ta},{tb})")


@pytest.mark.parametrize("bias_axis", [0, 1])
@pytest.mark.parametrize("relu", [False, True])
def test_gemm_bias_relu(device_backend, rng, bias_axis, relu):
    B = device_backend
    M, N, K = 37, 70, 19
    a, b, ref = _operands(rng, M, N, K, False, True)
    bias = randn(rng, M if bias_axis == 0 else N)
    ref = ref + (bias[:, None] if bias_axis == 0 else bias[None, :])
    if relu:
        ref = np.maximum(ref, 0)
    out = B.gemm(*dev(B, a, b), trans_b=True, bias=B.asarray(bias), bias_axis=bias_axis,
                 relu=relu)
    (out,) = host(B, out)
    assert_close(out, ref, TOL, "gemm + bias (+ReLU)")
    if relu:
        assert (out >= 0).all() and (out == 0).any()


def test_gemm_accumulate(device_backend, rng):
    B = device_backend
    M, N, K = 20, 67, 33
    a, b, ref = _operands(rng, M, N, K, True, False)
    c0 = randn(rng, M, N)
    out = B.asarray(c0.copy())  # asarray may return c0 itself (emu)
    B.gemm(*dev(B, a, b), trans_a=True, out=out, beta=1.0)
    (out,) = host(B, out)
    assert_close(out, ref + c0, TOL, "gemm with beta=1")


def test_gemm_batched_reduce(device_backend, rng):
    """The kernel's batch (grid y/z) strides and its reduction over r, used by the conv."""
    B = device_backend
    Y, Z, R, M, N, K = 2, 3, 4, 9, 21, 13
    a = randn(rng, Y, Z, R, M, K)
    b = randn(rng, Y, Z, R, N, K)  # used transposed
    c = B.empty((Y, Z, M, N))
    B._sgemm(B.asarray(a), B.asarray(b), c, M, N, K, lda=K, ldb=K, ldc=N, trans_b=True,
             batch_y=Y, batch_z=Z, a_y=Z * R * M * K, a_z=R * M * K, a_r=M * K,
             b_y=Z * R * N * K, b_z=R * N * K, b_r=N * K, c_y=Z * M * N, c_z=M * N,
             red_per_z=R, red_total=R * Z)
    ref = np.einsum("yzrmk,yzrnk->yzmn", *f64(a, b))
    assert_close(B.to_numpy(c), ref, TOL, "batched-reduce sgemm")
    # A ragged split of the reduction: z covers r in [2z, 2z+2) of 5 in all.
    a = randn(rng, 5, M, K)
    b = randn(rng, 5, K, N)
    c = B.empty((3, M, N))
    B._sgemm(B.asarray(a), B.asarray(b), c, M, N, K, lda=K, ldb=N, ldc=N, batch_z=3,
             a_z=2 * M * K, a_r=M * K, b_z=2 * K * N, b_r=K * N, c_z=M * N, red_per_z=2,
             red_total=5)
    a64, b64 = f64(a, b)
    parts = [sum(a64[r] @ b64[r] for r in range(lo, min(lo + 2, 5))) for lo in (0, 2, 4)]
    assert_close(B.to_numpy(c), np.stack(parts), TOL, "split reduction")


# ---- im2col / col2im directly --------------------------------------------------------------------
def _im2col_ref(x, g):
    N, C, H, W = x.shape
    cols = np.zeros((N, C, g.kh, g.kw, g.Ho, g.Wo), dtype=np.float64)
    for i in range(g.kh):
        for j in range(g.kw):
            for ho in range(g.Ho):
                h = ho * g.sh - g.ph + i * g.dh
                if not 0 <= h < H:
                    continue
                for wo in range(g.Wo):
                    w = wo * g.sw - g.pw + j * g.dw
                    if 0 <= w < W:
                        cols[:, :, i, j, ho, wo] = x[:, :, h, w]
    return cols.reshape(N, C * g.kh * g.kw * g.Ho * g.Wo)


def test_im2col_col2im(device_backend, rng):
    from gpucnn.backends.base import conv_geometry
    B = device_backend
    x = randn(rng, 2, 3, 9, 8)
    g = conv_geometry(x.shape, (4, 3, 3, 2), stride=(2, 1), padding=(2, 1), dilation=(1, 2))
    P = g.Ho * g.Wo
    n = 2 * g.C * g.kh * g.kw * P
    cols = B.empty((n,))
    B._launch_grid_stride("im2col", 2 * g.C * P, B.asarray(x), cols, *B._geom_args(g, 2))
    ref = _im2col_ref(x.astype(np.float64), g)
    np.testing.assert_array_equal(B.to_numpy(cols).reshape(ref.shape), ref.astype(np.float32))
    # col2im is im2col's adjoint: <im2col(x), c> == <x, col2im(c)>.
    c = randn(rng, n)
    dx = B.empty(x.shape)
    B._launch_grid_stride("col2im", x.size, B.asarray(c), dx, *B._geom_args(g, 2))
    lhs = float(ref.ravel() @ c.astype(np.float64))
    rhs = float(x.astype(np.float64).ravel() @ B.to_numpy(dx).astype(np.float64).ravel())
    assert abs(lhs - rhs) <= 1e-5 * max(1.0, abs(lhs))


# ---- convolution --------------------------------------------------------------------------------
# (N, C, H, W), (F, kh, kw), stride, padding, dilation, groups, relu
CONV_CASES = {
    "alexnet_conv1": ((1, 3, 227, 227), (2, 11, 11), 4, 0, 1, 1, True),
    "pad": ((2, 3, 9, 11), (5, 3, 3), 1, 1, 1, 1, False),
    "dilation2": ((2, 2, 10, 9), (3, 3, 3), 1, 2, 2, 1, True),
    "groups2": ((2, 4, 7, 8), (6, 3, 3), 1, 1, 1, 2, False),
    "groups3_stride2": ((3, 6, 9, 7), (3, 3, 2), 2, (1, 0), 1, 3, True),
    "1x1": ((2, 5, 6, 7), (3, 1, 1), 1, 0, 1, 1, False),
    "1x1_groups": ((2, 4, 5, 5), (6, 1, 1), 1, 0, 1, 2, True),
    "1x1_stride2_pad": ((2, 3, 7, 6), (4, 1, 1), 2, 1, 1, 1, False),
    "batch1_odd": ((1, 3, 13, 5), (7, 3, 2), (2, 3), (1, 0), 1, 1, False),
    "rect_dilation": ((2, 2, 11, 12), (3, 2, 3), (1, 2), (0, 3), (3, 2), 1, False),
}


def _conv_inputs(rng, case, bias=True):
    xs, (F, kh, kw), s, p, d, gr, relu = CONV_CASES[case]
    x = randn(rng, *xs)
    w = randn(rng, F, xs[1] // gr, kh, kw)
    b = randn(rng, F) if bias else None
    return x, w, b, dict(stride=s, padding=p, dilation=d, groups=gr), relu


def _tol(w):
    return TOL_LARGE_K if w[0].size > 256 else TOL


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv2d_forward(device_backend, numpy_backend, rng, case):
    B = device_backend
    x, w, b, kw, relu = _conv_inputs(rng, case)
    ref = numpy_backend.conv2d(*f64(x, w, b), **kw, relu=relu)
    y = B.conv2d(*dev(B, x, w, b), **kw, relu=relu)
    assert_close(B.to_numpy(y), ref, _tol(w), f"conv2d {case}")


def test_conv2d_forward_no_bias(device_backend, numpy_backend, rng):
    B = device_backend
    x, w, _, kw, _ = _conv_inputs(rng, "groups2", bias=False)
    ref = numpy_backend.conv2d(*f64(x, w), **kw)
    assert_close(B.to_numpy(B.conv2d(*dev(B, x, w), **kw)), ref, TOL, "conv2d without bias")


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv2d_backward(device_backend, numpy_backend, rng, case):
    B = device_backend
    x, w, _, kw, _ = _conv_inputs(rng, case, bias=False)
    geom_y = numpy_backend.conv2d(x, w, **kw).shape
    dy = randn(rng, *geom_y)
    refs = numpy_backend.conv2d_backward(*f64(dy, x, w), **kw)
    outs = host(B, *B.conv2d_backward(*dev(B, dy, x, w), **kw))
    tol = TOL_LARGE_K if dy[0, 0].size > 256 or w[0].size > 256 else TOL
    for name, out, ref in zip(("dx", "dw", "db"), outs, refs):
        assert out.dtype == np.float32
        assert_close(out, ref, tol, f"conv2d_backward {case} {name}")


@pytest.mark.parametrize("case", ["groups3_stride2", "1x1_groups"])
def test_conv2d_backward_partial(device_backend, numpy_backend, rng, case):
    """need_dx=False / need_dw=False skip those gradients (None) and leave the others exact."""
    B = device_backend
    x, w, _, kw, _ = _conv_inputs(rng, case, bias=False)
    dy = randn(rng, *numpy_backend.conv2d(x, w, **kw).shape)
    refs = numpy_backend.conv2d_backward(*f64(dy, x, w), **kw)
    dx, dw, db = B.conv2d_backward(*dev(B, dy, x, w), **kw, need_dx=False)
    assert dx is None
    assert_close(B.to_numpy(dw), refs[1], TOL, "dw without dx")
    assert_close(B.to_numpy(db), refs[2], TOL, "db without dx")
    dx, dw, db = B.conv2d_backward(*dev(B, dy, x, w), **kw, need_dw=False)
    assert dw is None and db is None
    assert_close(B.to_numpy(dx), refs[0], TOL, "dx without dw")


@pytest.mark.parametrize("case", ["pad", "groups3_stride2", "1x1"])
def test_conv_chunked_workspace(device_backend, rng, monkeypatch, case):
    """A tiny workspace (one image per chunk) and a split/unsplit dW reduction give the same
    results as the unchunked path."""
    B = device_backend
    x, w, b, kw, relu = _conv_inputs(rng, case)
    dy = randn(rng, *B.to_numpy(B.conv2d(*dev(B, x, w), **kw)).shape)
    args = dev(B, x, w, b)
    y_full = B.to_numpy(B.conv2d(*args, **kw, relu=relu))
    grads_full = host(B, *B.conv2d_backward(*dev(B, dy, x, w), **kw))
    monkeypatch.setattr(B, "workspace_bytes", 1)
    for target in (1, 10**6):  # no split / split over every image of the chunk
        monkeypatch.setattr(B, "dw_target_blocks", target, raising=False)
        y = B.to_numpy(B.conv2d(*args, **kw, relu=relu))
        assert_close(y, y_full, 1e-6, f"chunked conv2d {case}")
        grads = host(B, *B.conv2d_backward(*dev(B, dy, x, w), **kw))
        for name, out, ref in zip(("dx", "dw", "db"), grads, grads_full):
            assert_close(out, ref, 1e-6, f"chunked conv2d_backward {case} {name}")
    # And the split path on the unchunked batch.
    monkeypatch.setattr(B, "workspace_bytes", 1 << 30)
    monkeypatch.setattr(B, "dw_target_blocks", 10**6, raising=False)
    grads = host(B, *B.conv2d_backward(*dev(B, dy, x, w), **kw))
    assert_close(grads[1], grads_full[1], 1e-6, f"split dW {case}")


def test_conv_chunk_plan_and_workspace_reuse(device_backend, rng, monkeypatch):
    from gpucnn.backends.base import conv_geometry
    B = device_backend
    g = conv_geometry((5, 3, 8, 8), (4, 3, 3, 3), padding=1)
    per_image = 3 * 9 * 64 * 4
    monkeypatch.setattr(B, "workspace_bytes", 2 * per_image + 7)
    assert B._conv_plan(g) == (False, 2)
    monkeypatch.setattr(B, "workspace_bytes", 10)
    assert B._conv_plan(g) == (False, 1)  # at least one image
    monkeypatch.setattr(B, "workspace_bytes", 1 << 30)
    assert B._conv_plan(g) == (False, 5)
    assert B._conv_plan(conv_geometry((5, 3, 8, 8), (4, 3, 1, 1)))[0] is True
    # One buffer, reused by later (smaller or equal) layers.
    x, w = dev(B, randn(rng, 2, 3, 8, 8), randn(rng, 4, 3, 3, 3))
    B.conv2d(x, w, padding=1)
    buf = B._conv_ws
    B.conv2d(x[:1].copy(), w, padding=1)
    B.conv2d_backward(B.conv2d(x, w, padding=1), x, w, padding=1)
    assert B._conv_ws is buf


def test_matmul_path(device_backend, numpy_backend, rng, monkeypatch):
    """The use_cublas comparison path (xp.matmul for every GEMM; on emu xp is NumPy, so the
    same code runs through np.matmul here) gives the same results."""
    B = device_backend
    monkeypatch.setattr(B, "_use_cublas", lambda: True)
    monkeypatch.setattr(B, "workspace_bytes", 1)  # chunked: dW accumulates over chunks
    for case in ("groups3_stride2", "1x1_groups"):
        x, w, b, kw, relu = _conv_inputs(rng, case)
        ref = numpy_backend.conv2d(*f64(x, w, b), **kw, relu=relu)
        assert_close(B.to_numpy(B.conv2d(*dev(B, x, w, b), **kw, relu=relu)), ref, TOL, case)
        dy = randn(rng, *ref.shape)
        refs = numpy_backend.conv2d_backward(*f64(dy, x, w), **kw)
        for out, r in zip(host(B, *B.conv2d_backward(*dev(B, dy, x, w), **kw)), refs):
            assert_close(out, r, TOL, f"{case} backward (matmul path)")
    a, bm, ref = _operands(rng, 9, 14, 5, True, False)
    bias = randn(rng, 9)
    out = B.gemm(*dev(B, a, bm), trans_a=True, bias=B.asarray(bias), bias_axis=0, relu=True)
    assert_close(B.to_numpy(out), np.maximum(ref + bias[:, None], 0), TOL, "gemm (matmul path)")
    c0 = randn(rng, 9, 14)
    out = B.asarray(c0.copy())
    B.gemm(*dev(B, a, bm), trans_a=True, out=out, beta=1.0)
    assert_close(B.to_numpy(out), ref + c0, TOL, "gemm beta=1 (matmul path)")
    x, w, b = randn(rng, 4, 6), randn(rng, 3, 6), randn(rng, 3)
    assert_close(B.to_numpy(B.linear(*dev(B, x, w, b))),
                 numpy_backend.linear(*f64(x, w, b)), TOL, "linear (matmul path)")


# ---- fully connected ----------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 33, 17), (64, 70, 65)], ids=str)
@pytest.mark.parametrize("relu", [False, True])
def test_linear(device_backend, numpy_backend, rng, shape, relu):
    B = device_backend
    n, fin, fout = shape
    x, w, b = randn(rng, n, fin), randn(rng, fout, fin), randn(rng, fout)
    ref = numpy_backend.linear(*f64(x, w, b), relu=relu)
    assert_close(B.to_numpy(B.linear(*dev(B, x, w, b), relu=relu)), ref, TOL, "linear")
    ref = numpy_backend.linear(*f64(x, w))
    assert_close(B.to_numpy(B.linear(*dev(B, x, w))), ref, TOL, "linear without bias")


@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 33, 17), (70, 64, 3)], ids=str)
def test_linear_backward(device_backend, numpy_backend, rng, shape):
    B = device_backend
    n, fin, fout = shape
    x, w, dy = randn(rng, n, fin), randn(rng, fout, fin), randn(rng, n, fout)
    refs = numpy_backend.linear_backward(*f64(dy, x, w))
    outs = host(B, *B.linear_backward(*dev(B, dy, x, w)))
    for name, out, ref in zip(("dx", "dw", "db"), outs, refs):
        assert_close(out, ref, TOL, f"linear_backward {name}")


def test_bias_grad_many_channels(device_backend, numpy_backend, rng):
    """More channels than blocks (block-stride loop) and N*P not a multiple of the block."""
    B = device_backend
    dy = randn(rng, 3, 2 * B.max_blocks + 3, 5, 7)
    db = B.empty((dy.shape[1],))
    B._launch_bias_grad_nchw(B.asarray(dy), db, 3, dy.shape[1], 35)
    assert_close(B.to_numpy(db), dy.astype(np.float64).sum(axis=(0, 2, 3)), TOL, "db")
