"""The tensor-core kernels' operand staging (kernels/gemm_operand.cuh, used by sgemm_tc.cu
and by the forward convolution's weights in tensor_core.cuh): 128-bit global loads where an
operand allows them, scalar loads otherwise. Only which thread loads which element depends
on the path; shared memory receives the same slice, so the results must be bit-identical
between the vector and the scalar paths (and, checked once against the kernels before this
change on the emulator, to those: the k order of the accumulation is unchanged). Each result
is also held to the float64 product, so that two equally broken paths cannot agree
unnoticed.
"""
import numpy as np
import pytest

from gpucnn.ops import gemm as G
from gpucnn.testing import assert_close, f64, randn

TC = ("tf32", "3xtf32", "bf16")
# Loose: these tests are about bit-identity between paths; the derived bounds live in
# test_tensor_cores.py. This only catches garbage (a wrong element, NaN from the padding).
TOL = {"tf32": 2e-3, "3xtf32": 1e-5, "bf16": 2e-2}
TRANS = [(False, False), (True, False), (False, True), (True, True)]
TRANS_IDS = ["NN", "TN", "NT", "TT"]


def _stored(B, x, ld, shift=0):
    """x (rows x cols) with leading dimension ld (NaN padding), starting `shift` floats past
    a 16-byte boundary."""
    store = np.full((x.shape[0], ld), np.nan, np.float32)
    store[:, :x.shape[1]] = x
    flat = B.asarray(np.zeros(store.size + 8, np.float32))
    i = (-(G.array_address(flat) // 4)) % 4 + shift
    view = flat[i:i + store.size]
    view[...] = B.asarray(store.ravel())
    assert (G.array_address(view) % 16 == 0) == (shift == 0)
    return view


def _aligned_and_shifted(B, w, run):
    """``run(weights on the device)`` with w 16-byte aligned and 4 bytes past a boundary."""
    return [B.to_numpy(run(_stored(B, w.reshape(w.shape[0], -1), w[0].size, shift)
                           .reshape(w.shape))) for shift in (0, 1)]


def _check_both(outs, ref, precision, what):
    """The aligned run near the float64 reference; the shifted (scalar) run equal to it."""
    assert_close(outs[0], ref, TOL[precision], what)
    np.testing.assert_array_equal(outs[1].view(np.uint32), outs[0].view(np.uint32),
                                  err_msg=f"{what}: scalar != vector weights")


@pytest.mark.parametrize("precision", TC)
@pytest.mark.parametrize("ta,tb", TRANS, ids=TRANS_IDS)
@pytest.mark.parametrize("M,N,K", [(129, 127, 130), (40, 72, 36), (5, 130, 19)], ids=str)
def test_sgemm_vector_and_scalar_loads_agree(device_precision, rng, precision, M, N, K, ta, tb):
    """Aligned operands with leading dimensions a multiple of 4 (128-bit loads, scalar ones
    only across the ragged edges), the same with vector loads off, leading dimensions not
    a multiple of 4, and operands 4 bytes past a 16-byte boundary: one result, bit for bit."""
    B = device_precision(precision)
    a = randn(rng, *((K, M) if ta else (M, K)))
    b = randn(rng, *((N, K) if tb else (K, N)))
    r4 = lambda n: -(-n // 4) * 4 + 4                          # noqa: E731
    odd = lambda n: n + 1 if n % 4 != 3 else n + 2             # noqa: E731
    runs = {}
    for layout, ld, shift, vector in (("vector", r4, 0, True), ("scalar", r4, 0, False),
                                      ("odd_ld", odd, 0, True), ("shifted", r4, 1, True)):
        lda, ldb = ld(a.shape[1]), ld(b.shape[1])
        da, db = _stored(B, a, lda, shift), _stored(B, b, ldb, shift)
        # the launcher's choice (SgemmLaunch.args): 128-bit loads in "vector" only
        assert (vector and G.vector_ok(da, lda) and G.vector_ok(db, ldb)) == (layout == "vector")
        c = B.empty((M, N))
        G.sgemm(B.ctx, da, db, c, M, N, K, lda, ldb, N, ta, tb, vector=vector)
        runs[layout] = B.to_numpy(c)
    ref = G.reference(*f64(a, b), trans_a=ta, trans_b=tb)
    assert_close(runs["vector"], ref, TOL[precision], f"{precision} vector loads")
    for layout, out in runs.items():
        np.testing.assert_array_equal(out.view(np.uint32), runs["vector"].view(np.uint32),
                                      err_msg=f"{precision} {layout} != vector")


# K = Cg * kh * kw a multiple of 4 (the weights' 128-bit path), past one 128-filter tile and
# with two groups (each group's weights start K * Fg floats in).
FPROP = {
    "grouped_k12": ((2, 4, 8, 7), (6, 2, 3, 2), dict(padding=(2, 1), groups=2)),
    "two_filter_tiles_k32": ((1, 8, 6, 5), (130, 8, 2, 2), dict(padding=1)),
    "pointwise_k36": ((2, 36, 5, 4), (20, 36, 1, 1), dict(stride=2)),
}


@pytest.mark.parametrize("precision", TC)
@pytest.mark.parametrize("case", sorted(FPROP))
def test_conv_forward_vector_weights_agree(device_precision, reference_backend, rng, precision,
                                           case):
    """The implicit-GEMM forward with w 16-byte aligned (its weights in float4 chunks) and
    with the same w 4 bytes past a boundary (ConvFprop's scalar gather): bit-identical."""
    xs, ws, kw = FPROP[case]
    assert ws[1] * ws[2] * ws[3] % 4 == 0
    B = device_precision(precision)
    x = randn(rng, *xs)
    w = randn(rng, *ws)
    bias = randn(rng, ws[0])
    outs = _aligned_and_shifted(
        B, w, lambda dw: B.conv2d(B.asarray(x), dw, B.asarray(bias), algo="implicit", **kw))
    ref = reference_backend.conv2d(*f64(x, w, bias), **kw)
    _check_both(outs, ref, precision, f"{precision} {case} forward")


# 1 x 1 filters with Cg a multiple of 4 (the weights' 128-bit path of backward-data), past
# one 128-channel tile, strided (one phase with the tap, three without) and grouped.
DGRAD = {
    "two_channel_tiles": ((1, 132, 3, 4), (20, 132, 1, 1), dict()),
    "strided": ((2, 8, 7, 6), (12, 8, 1, 1), dict(stride=2)),
    "grouped": ((2, 24, 4, 5), (10, 12, 1, 1), dict(groups=2)),
}


@pytest.mark.parametrize("precision", TC)
@pytest.mark.parametrize("case", sorted(DGRAD))
def test_conv_backward_data_vector_weights_agree(device_precision, reference_backend, rng,
                                                 precision, case):
    """The implicit-GEMM backward-data of a 1 x 1 convolution with w 16-byte aligned (float4
    chunks of channels) and with the same w 4 bytes past a boundary (ConvDgrad's scalar
    gather): dx bit-identical."""
    xs, ws, kw = DGRAD[case]
    assert ws[2] * ws[3] == 1 and ws[1] % 4 == 0
    B = device_precision(precision)
    x = randn(rng, *xs)
    w = randn(rng, *ws)
    y = reference_backend.conv2d(*f64(x, w, np.zeros(ws[0])), **kw)
    dy = randn(rng, *y.shape)
    outs = _aligned_and_shifted(
        B, w, lambda dw: B.conv2d_backward(B.asarray(dy), B.asarray(x), dw, algo="implicit",
                                           **kw)[0])
    ref = reference_backend.conv2d_backward(*f64(dy, x, w), **kw)[0]
    _check_both(outs, ref, precision, f"{precision} {case} dx")


# Output planes of P = Ho * Wo a multiple of 16 (dy's 128-bit path of backward-weights):
# past one 128-filter tile, strided, padded and grouped, and long enough to be split.
WGRAD = {
    "two_filter_tiles": ((1, 5, 8, 8), (130, 5, 1, 1), dict()),
    "strided": ((2, 3, 9, 9), (7, 3, 3, 3), dict(stride=2)),
    "grouped_split": ((8, 4, 8, 8), (6, 2, 3, 3), dict(padding=1, groups=2)),
}


@pytest.mark.parametrize("precision", TC)
@pytest.mark.parametrize("case", sorted(WGRAD))
def test_conv_backward_weights_vector_dy_agree(device_precision, reference_backend, rng,
                                               precision, case):
    """The implicit-GEMM backward-weights with dy 16-byte aligned (float4 chunks of output
    positions) and with the same dy 4 bytes past a boundary (ConvWgrad's scalar gather):
    dw bit-identical."""
    xs, ws, kw = WGRAD[case]
    B = device_precision(precision)
    x = randn(rng, *xs)
    w = randn(rng, *ws)
    y = reference_backend.conv2d(*f64(x, w, np.zeros(ws[0])), **kw)
    assert y.shape[2] * y.shape[3] % 16 == 0
    dy = randn(rng, *y.shape)
    outs = []
    for shift in (0, 1):
        ddy = _stored(B, dy.reshape(-1, y.shape[2] * y.shape[3]), y.shape[2] * y.shape[3],
                      shift).reshape(y.shape)
        dw = B.conv2d_backward(ddy, B.asarray(x), B.asarray(w), algo="implicit", **kw)[1]
        outs.append(B.to_numpy(dw))
    ref = reference_backend.conv2d_backward(*f64(dy, x, w), **kw)[1]
    assert_close(outs[0], ref, TOL[precision], f"{precision} {case} dw")
    np.testing.assert_array_equal(outs[1].view(np.uint32), outs[0].view(np.uint32),
                                  err_msg=f"{precision} {case}: scalar != vector dy")
