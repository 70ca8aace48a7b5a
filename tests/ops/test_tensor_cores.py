"""The tensor-core precisions (tf32, 3xtf32, bf16; gpucnn/ops/precision.py) of every
multiplying op on the device backend: kernels/sgemm_tc.cu (linear, im2col convolutions) and
kernels/conv_implicit_tc.cu (implicit-GEMM convolutions), against the float64 plain
definition and against the rounded one (the reference backend in the same precision).

Error bounds, derived rather than fitted. A value rounded to a format of unit roundoff u
(tf32: u = 2^-11, cvt.rna; bf16: u = 2^-8, round to nearest even) is off by at most u
relatively, so a product of two rounded operands by at most 2u + u^2; products of TF32 or
BF16 values are exact in FP32, and an FP32 sum of K terms adds at most K * 2^-24 relative to
the sum of their magnitudes. So, norm-wise, with |A||B| the product of the absolute values
(the reference run on |x| and |w|):

    ||Y - Y64||      <= (2u + u^2 + K 2^-24) ||  |A||B|  ||     (tf32, bf16)
    ||Y - Y64||      <= (3 * 2^-22 + K 2^-24) || |A||B| ||       (3xtf32: each operand held by
                        big + small to within 2^-22, the dropped small*small below 2^-22)
    ||Y - Yrounded|| <= K 2^-24 || |A||B| ||                     (the same products, summed in
                                                                  another order)

The element-wise checks (gpucnn.testing.assert_close) use the same bound per element.
"""
import numpy as np
import pytest

from gpucnn.ops.precision import round_operand
from gpucnn.testing import assert_close, rel_error

TC = ("tf32", "3xtf32", "bf16")
UNIT = {"tf32": 2.0 ** -11, "bf16": 2.0 ** -8}
EPS32 = 2.0 ** -24


def bound(precision, K, against):
    """The relative bound factor c: ||Y - ref|| <= c * || |A||B| || (module docstring)."""
    acc = K * EPS32
    if against == "rounded" or precision in ("fp32",):
        return acc
    if precision == "3xtf32":
        return 3 * 2.0 ** -22 + acc
    u = UNIT[precision]
    return 2 * u + u * u + acc


def check(out, ref, magnitude, factor, what):
    """assert_close with the derived bound, as a relative tolerance of ||ref||."""
    tol = factor * float(np.linalg.norm(magnitude)) / float(np.linalg.norm(ref))
    return assert_close(out, ref, tol, what, elem_tol=tol * 4)


def conv_case(B, x, w, b, kw, algo):
    """Forward and backward (dx, dw, db) of conv2d on backend B, as float64 host arrays."""
    bx, bw, bb = B.asarray(x), B.asarray(w), B.asarray(b)
    y = B.conv2d(bx, bw, bb, algo=algo, **kw)
    dy = np.cos(np.arange(y.size, dtype=np.float64)).reshape(y.shape).astype(np.float32)
    dx, dw, db = B.conv2d_backward(B.asarray(dy), bx, bw, algo=algo, **kw)
    return [B.to_numpy(a).astype(np.float64) for a in (y, dx, dw, db)], dy


def reference(R, x, w, b, dy, kw):
    y = R.conv2d(x, w, b, **kw)
    dx, dw, db = R.conv2d_backward(dy, x, w, **kw)
    return [y, dx, dw, db]


def f64(*arrays):
    return [np.asarray(a, dtype=np.float64) for a in arrays]


GEOMETRIES = {
    "ragged_stride2": ((2, 3, 7, 9), (5, 3, 3, 3), dict(stride=2, padding=1)),
    "groups_dilation": ((2, 4, 8, 7), (6, 2, 3, 2), dict(padding=(2, 1), dilation=2, groups=2)),
    "pointwise_wide": ((1, 70, 5, 6), (33, 70, 1, 1), dict()),
    # past one 128 x 128 tile along m and n in all three products (ragged), so every warp's
    # fragments, both halves of their trip through shared memory, reach the output
    "two_tiles_each_way": ((2, 130, 10, 10), (131, 130, 1, 1), dict()),
}


@pytest.mark.parametrize("precision", TC)
@pytest.mark.parametrize("algo", ("implicit", "im2col"))
@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_conv_forward_backward(device_precision, reference_backend, rng, precision, algo,
                               geometry):
    from gpucnn import get_backend
    xs, ws, kw = GEOMETRIES[geometry]
    x, w = rng.standard_normal(xs).astype(np.float32), rng.standard_normal(ws).astype(np.float32)
    b = rng.standard_normal(ws[0]).astype(np.float32)
    B = device_precision(precision)
    assert B.precision == precision
    out, dy = conv_case(B, x, w, b, kw, algo)
    exact = reference(reference_backend, *f64(x, w, b, dy), kw)
    rounded = reference(get_backend("reference", precision), *f64(x, w, b, dy), kw)
    mags = reference(reference_backend, *f64(np.abs(x), np.abs(w), np.abs(b), np.abs(dy)), kw)
    # the reduction length of each product: taps (forward, dx) and positions (dw, db)
    taps = ws[1] * ws[2] * ws[3]
    lengths = (taps, ws[0] * ws[2] * ws[3], xs[0] * out[0].shape[2] * out[0].shape[3],
               out[0].size // ws[0])
    for name, o, e, r, m, K in zip(("y", "dx", "dw", "db"), out, exact, rounded, mags, lengths):
        check(o, e, m, bound(precision, K, "exact"), f"{precision} {algo} {name} vs float64")
        check(o, r, m, bound(precision, K, "rounded"), f"{precision} {algo} {name} vs rounded")


@pytest.mark.parametrize("precision", TC)
def test_linear_split_k_and_batched_reduce(device_precision, rng, precision):
    """A skinny FC GEMM (split over K, gemm_plan) forward and backward, with bias and ReLU."""
    from gpucnn import get_backend
    from gpucnn.ops.gemm import gemm_plan
    n, fin, fout = 4, 1100, 70
    assert gemm_plan(n, fout, fin, trans_b=True, precision=precision).split > 1
    x = rng.standard_normal((n, fin)).astype(np.float32)
    w = rng.standard_normal((fout, fin)).astype(np.float32)
    b = rng.standard_normal(fout).astype(np.float32)
    B = device_precision(precision)
    y = B.to_numpy(B.linear(B.asarray(x), B.asarray(w), B.asarray(b)))
    R = get_backend("reference", precision)
    xr, wr, br = f64(x, w, b)
    rounded = R.linear(xr, wr, br)
    exact = xr @ wr.T + br
    mag = np.abs(xr) @ np.abs(wr).T + np.abs(br)
    check(y, exact, mag, bound(precision, fin, "exact"), f"{precision} linear vs float64")
    check(y, rounded, mag, bound(precision, fin, "rounded"), f"{precision} linear vs rounded")


@pytest.mark.parametrize("order", ("reverse", "random"))
def test_thread_orders(device_precision, rng, order):
    """The tensor-core main loop's barriers hold whatever order the threads run in."""
    x = rng.standard_normal((1, 9, 6, 7)).astype(np.float32)
    w = rng.standard_normal((20, 9, 3, 3)).astype(np.float32)
    b = rng.standard_normal(20).astype(np.float32)
    outs = [conv_case(device_precision("tf32", o), x, w, b, dict(padding=1), "implicit")[0]
            for o in ("forward", order)]
    for a, c in zip(*outs):
        np.testing.assert_array_equal(a, c)


def errors(B, R, x, w, kw):
    """Relative errors of y, dx, dw on backend B against the float64 reference R."""
    out, dy = conv_case(B, x, w, np.zeros(w.shape[0], np.float32) + 0.5, kw, "implicit")
    exact = reference(R, *f64(x, w, np.zeros(w.shape[0]) + 0.5, dy), kw)
    return [rel_error(o, e) for o, e in zip(out[:3], exact[:3])]


# AlexNet's conv layers (CIFAR variant's channel counts, batch 1, reduced planes so that the
# emulator runs them in seconds): the reduction lengths of the real layers.
ALEXNET = {
    "conv2": ((1, 64, 9, 9), (48, 64, 5, 5), dict(padding=2)),
    "conv3": ((1, 192, 7, 7), (40, 192, 3, 3), dict(padding=1)),
}


@pytest.mark.parametrize("layer", sorted(ALEXNET))
def test_error_order(device_precision, reference_backend, rng, layer):
    """err(bf16) > err(tf32) > err(3xtf32), tf32 at least 10x worse than 3xtf32: a path that
    silently ran FP32 cannot pass as TF32, nor TF32 as BF16."""
    xs, ws, kw = ALEXNET[layer]
    x, w = rng.standard_normal(xs).astype(np.float32), rng.standard_normal(ws).astype(np.float32)
    err = {p: errors(device_precision(p), reference_backend, x, w, kw) for p in TC}
    for i, name in enumerate(("y", "dx", "dw")):
        e = {p: err[p][i] for p in TC}
        assert e["bf16"] > e["tf32"] > e["3xtf32"], f"{layer} {name}: {e}"
        assert e["tf32"] >= 10 * e["3xtf32"], f"{layer} {name}: {e}"


def test_round_operand_is_what_the_kernels_see(rng):
    """The rounded reference's operands: tf32 / bf16 rounding, fp32 and 3xtf32 unchanged."""
    from gpucnn.ops.precision import bf16_to_float32, round_bf16, round_tf32
    a = rng.standard_normal(1000).astype(np.float32)
    np.testing.assert_array_equal(round_operand(a, "tf32"), round_tf32(a))
    np.testing.assert_array_equal(round_operand(a, "bf16"), bf16_to_float32(round_bf16(a)))
    for p in ("fp32", "3xtf32"):
        np.testing.assert_array_equal(round_operand(a, p), a)
    with pytest.raises(ValueError, match="fp32, tf32, 3xtf32, bf16"):
        round_operand(a, "fp16")
