"""The device SGEMM (kernels/sgemm.cu, launched by gpucnn/ops/gemm.py) against the plain
definition ``gpucnn.ops.gemm.reference`` in float64.

Tests taking ``device_backend`` run on the emulator in three thread orders (or on a GPU with
--device-backend cuda); the emulator poisons every output buffer before a kernel writes it.
"""
import numpy as np
import pytest

from gpucnn.ops import gemm as G
from gpucnn.testing import assert_close, f64, randn, to_backend, to_host
from gpucnn.toolchain import source_defines
from gpucnn.toolchain.limits import GRID_DIM_MAX

TOL = 1e-5

SHAPES = [(1, 1, 1), (17, 33, 65), (64, 64, 64), (70, 3, 129)]  # M, N, K: ragged tiles
TRANS = [(False, False), (True, False), (False, True), (True, True)]


def _operands(rng, M, N, K, ta, tb):
    a = randn(rng, *((K, M) if ta else (M, K)))
    b = randn(rng, *((N, K) if tb else (K, N)))
    return a, b


# ---- launch geometry: read from the .cu file, not retyped ------------------------------
def test_tile_is_the_sources_defines():
    t = G.sgemm_tile()
    src = source_defines("sgemm.cu", "SGEMM")
    for k in ("BM", "BN", "BK", "TM", "TN", "THREADS"):
        assert t[k] == src[k], k
    assert t["THREADS"] == (t["BM"] // t["TM"]) * (t["BN"] // t["TN"])


def test_launch_geometry():
    t = G.sgemm_tile()
    M, N = 2 * t["BM"] + 1, t["BN"] + 1  # one row / column past a tile edge: 3 x 2 tiles
    grid, block = G.sgemm_launch(M, N, 2, 3)
    assert grid == (3 * 2, 2, 3) and block == (t["THREADS"], 1, 1)
    assert G.sgemm_launch(t["BM"], t["BN"]) == ((1, 1, 1), (t["THREADS"], 1, 1))
    with pytest.raises(ValueError, match="grid limit"):
        G.sgemm_launch(4, 4, batch_y=GRID_DIM_MAX[1] + 1)
    with pytest.raises(ValueError, match="grid limit"):
        G.sgemm_launch(4, 4, batch_z=GRID_DIM_MAX[2] + 1)


# ---- gemm(): the 2-D entry point -------------------------------------------------------
@pytest.mark.parametrize("ta,tb", TRANS, ids=["NN", "TN", "NT", "TT"])
@pytest.mark.parametrize("M,N,K", SHAPES, ids=str)
def test_gemm(device_backend, rng, M, N, K, ta, tb):
    B = device_backend
    a, b = _operands(rng, M, N, K, ta, tb)
    (out,) = to_host(B, G.gemm(B, *to_backend(B, a, b), trans_a=ta, trans_b=tb))
    assert out.dtype == np.float32
    ref = G.reference(*f64(a, b), trans_a=ta, trans_b=tb)
    assert_close(out, ref, TOL, f"gemm {M}x{N}x{K} trans=({ta},{tb})")


@pytest.mark.parametrize("bias_axis", [0, 1], ids=["per_row", "per_col"])
@pytest.mark.parametrize("relu", [False, True])
def test_gemm_bias_relu(device_backend, rng, bias_axis, relu):
    B = device_backend
    M, N, K = 37, 70, 19
    a, b = _operands(rng, M, N, K, False, True)
    bias = randn(rng, M if bias_axis == 0 else N)
    out = B.gemm(*to_backend(B, a, b), trans_b=True, bias=B.asarray(bias),
                 bias_axis=bias_axis, relu=relu)
    ref = G.reference(*f64(a, b), trans_b=True, bias=f64(bias)[0], bias_axis=bias_axis,
                      relu=relu)
    (out,) = to_host(B, out)
    assert_close(out, ref, TOL, "gemm + bias (+ReLU)")
    if relu:  # the clamp happened, and not everywhere
        assert (out >= 0).all() and (out == 0).any() and (out > 0).any()


def test_gemm_accumulate(device_backend, rng):
    B = device_backend
    M, N, K = 20, 67, 33
    a, b = _operands(rng, M, N, K, True, False)
    c0 = randn(rng, M, N)
    out = B.asarray(c0.copy())  # asarray may return its argument itself (emu)
    assert G.gemm(B, *to_backend(B, a, b), trans_a=True, out=out, beta=0.5) is out
    ref = G.reference(*f64(a, b), trans_a=True, c=f64(c0)[0], beta=0.5)
    assert_close(B.to_numpy(out), ref, TOL, "gemm with beta=0.5")


def test_gemm_matmul_path(device_backend, rng, monkeypatch):
    """use_cublas (the cuda backend's cuBLAS comparison mode; on emu xp is NumPy, so this
    runs np.matmul) follows the same contract."""
    B = device_backend
    monkeypatch.setattr(B, "use_cublas", True)
    a, b = _operands(rng, 9, 14, 5, True, False)
    bias, c0 = randn(rng, 9), randn(rng, 9, 14)
    out = B.gemm(*to_backend(B, a, b), trans_a=True, bias=B.asarray(bias),
                 bias_axis=0, relu=True)
    a64, b64, bias64, c64 = f64(a, b, bias, c0)
    assert_close(B.to_numpy(out), G.reference(a64, b64, trans_a=True, bias=bias64,
                                              bias_axis=0, relu=True), TOL, "matmul path")
    out = B.asarray(c0.copy())
    B.gemm(*to_backend(B, a, b), trans_a=True, out=out, beta=1.0)
    assert_close(B.to_numpy(out), G.reference(a64, b64, trans_a=True, c=c64, beta=1.0), TOL,
                 "matmul path, beta=1")


def test_bad_operands(device_backend, rng):
    B = device_backend
    a, b = to_backend(B, randn(rng, 4, 3), randn(rng, 3, 5))
    cases = [
        ((B.asarray(randn(rng, 2, 4, 3)), b), {}, "a must be a 2-D"),
        ((B.asarray(randn(rng, 4, 3), np.float64), b), {}, "float32"),
        ((B.asarray(randn(rng, 3, 4)).T, b), {}, "C-contiguous"),
        ((a, B.asarray(randn(rng, 4, 5))), {}, "inner dimensions differ"),
        ((a, b), dict(bias=B.asarray(randn(rng, 4))), r"bias must have shape \(5,\)"),
        ((a, b), dict(bias=B.asarray(randn(rng, 5), np.float64)), "bias must be .*float32"),
        ((a, b), dict(beta=1.0), "beta != 0 needs out"),
        ((a, b), dict(out=B.empty((5, 4))), r"out must be .*\(4, 5\)"),
        ((a, b), dict(out=B.empty((4, 5), np.float64)), "out must be .*float32"),
    ]
    for args, kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            G.gemm(B, *args, **kw)
    with pytest.raises(ValueError, match="beta != 0 needs c"):
        G.reference(*f64(randn(rng, 2, 2), randn(rng, 2, 2)), beta=1.0)


# ---- sgemm(): batched and batched-reduce launches, as the conv uses them -----------------
def test_sgemm_batched_reduce(device_backend, rng):
    """C[y, z] = sum_r A[y, z, r] @ B[y, z, r]^T: the strides over grid y/z and r."""
    B = device_backend
    Y, Z, R, M, N, K = 2, 3, 4, 9, 21, 13
    a, b = randn(rng, Y, Z, R, M, K), randn(rng, Y, Z, R, N, K)
    c = B.empty((Y, Z, M, N))
    G.sgemm(B, *to_backend(B, a, b), c, M, N, K, lda=K, ldb=K, ldc=N, trans_b=True,
            batch_y=Y, batch_z=Z, a_y=Z * R * M * K, a_z=R * M * K, a_r=M * K,
            b_y=Z * R * N * K, b_z=R * N * K, b_r=N * K, c_y=Z * M * N, c_z=M * N,
            red_per_z=R, red_total=R * Z)
    a64, b64 = f64(a, b)
    ref = np.stack([np.stack([sum(G.reference(a64[y, z, r], b64[y, z, r], trans_b=True)
                                  for r in range(R)) for z in range(Z)]) for y in range(Y)])
    assert_close(B.to_numpy(c), ref, TOL, "batched-reduce sgemm")


def test_sgemm_ragged_split_reduction(device_backend, rng):
    """Block z sums r in [2z, 2z + 2) of 5: the last part is short."""
    B = device_backend
    M, N, K = 9, 21, 13
    a, b = randn(rng, 5, M, K), randn(rng, 5, K, N)
    c = B.empty((3, M, N))
    G.sgemm(B, *to_backend(B, a, b), c, M, N, K, lda=K, ldb=N, ldc=N, batch_z=3,
            a_z=2 * M * K, a_r=M * K, b_z=2 * K * N, b_r=K * N, c_z=M * N, red_per_z=2,
            red_total=5)
    a64, b64 = f64(a, b)
    parts = [sum(G.reference(a64[r], b64[r]) for r in range(lo, min(lo + 2, 5)))
             for lo in (0, 2, 4)]
    assert_close(B.to_numpy(c), np.stack(parts), TOL, "split reduction")


def test_sgemm_batched_bias_per_group(device_backend, rng):
    """bias_y strides the bias per grid-y batch (one bias slice per conv group)."""
    B = device_backend
    Y, M, N, K = 3, 5, 11, 7
    a, b, bias = randn(rng, Y, M, K), randn(rng, Y, K, N), randn(rng, Y * M)
    c = B.empty((Y, M, N))
    G.sgemm(B, *to_backend(B, a, b), c, M, N, K, lda=K, ldb=N, ldc=N, batch_y=Y,
            a_y=M * K, b_y=K * N, c_y=M * N, bias=B.asarray(bias), bias_y=M, bias_axis=0,
            relu=True)
    a64, b64, bias64 = f64(a, b, bias)
    ref = np.stack([G.reference(a64[y], b64[y], bias=bias64[y * M:(y + 1) * M], bias_axis=0,
                                relu=True) for y in range(Y)])
    assert_close(B.to_numpy(c), ref, TOL, "batched sgemm + per-group bias + ReLU")


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_sum_partials(device_backend, rng, beta):
    B = device_backend
    S, count = 5, 3 * 256 + 17  # not a multiple of the block, more than one grid stride
    parts, out0 = randn(rng, S, count), randn(rng, count)
    out = B.asarray(out0.copy()) if beta else B.empty((count,))
    G.sum_partials(B, B.asarray(parts), out, count, S, beta)
    parts64, out64 = f64(parts, out0)
    assert_close(B.to_numpy(out), parts64.sum(axis=0) + beta * out64, TOL, "sum_partials")
