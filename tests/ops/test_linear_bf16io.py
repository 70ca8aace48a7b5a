"""The fully connected layer on bf16 activations (precision bf16, device backends):
``sgemm_bf16_{nt,nn,tn}_bf16io``, the split parts' ``sgemm_bf16_{nt,nn}_bf16a``
(kernels/sgemm_tc.cu) and ``bias_grad_rows_bf16io`` (kernels/conv_reduce.cu), reached through
``B.linear`` / ``B.linear_backward`` with uint16 x / dy (bfloat16 bits).

The bf16io kernels are the BF16 kernels' bodies with other element types: on bf16-exact
inputs, the float-activation kernel reads the same float values (its shared memory rounds
them to bf16, which leaves them unchanged), multiplies them in the same order, and only its
store differs (float32 instead of one rounding to bf16). A split K adds the same float32
parts in the same order in the same epilogue and rounds that sum once. So, bit for bit:

    y_bits  == round_bf16(y  of sgemm_bf16_nt on the same values)   (bias, ReLU or not)
    dx_bits == round_bf16(dx of sgemm_bf16_nn)
    dW, db  == dW of sgemm_bf16_tn (split or not), db of bias_grad_rows

Against float64: the bound of tests/ops/test_tensor_cores.py for bf16 (2u + u^2 + K 2^-24,
u = 2^-8, of || |A||B| ||) plus one more rounding of y and dx to bf16 (u of ||Y||).
"""
import re

import numpy as np
import pytest

from gpucnn import get_backend
from gpucnn.ops import linear
from gpucnn.ops.gemm import (BF16_GEMMS, SgemmLaunch, SplitKGemm, array_address, gemm_io_suffix,
                             plan_gemm, vector_ok)
from gpucnn.ops.precision import bf16_to_float32, round_bf16
from gpucnn.ops.storage import BF16, FLOAT32
from bf16_checks import (B, assert_bits_equal, assert_within, bf16_exact,  # noqa: F401
                         bf16_gemm_bound, dev16)
from gpucnn.testing import assert_close, f64
from gpucnn.toolchain import kernel_decls, kernel_dir, kernel_signatures
from gpucnn.toolchain.parse import object_macros, strip_comments


# (n, in, out): none a multiple of 4 or 8 (ragged chunks, scalar edges)
CASES = {
    # K < 2 * 64 in every product: no split
    "small_ragged": (5, 33, 17),
    # past one 128 x 128 tile along m and n, and K >= 128 in all three products: each is
    # split in two parts (the last one shorter)
    "two_tiles_split": (130, 141, 129),
}


def _splits(B, n, fin, fout):
    """Whether the forward, data- and weight-gradient GEMMs of these sizes split K."""
    f, s = FLOAT32, BF16
    plans = (plan_gemm(B.ctx, n, fout, fin, trans_b=True, dtypes=(s, f, s)),
             plan_gemm(B.ctx, n, fin, fout, dtypes=(s, f, s)),
             plan_gemm(B.ctx, fout, fin, n, trans_a=True, dtypes=(s, s, f)))
    return [isinstance(p, SplitKGemm) for p in plans]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bf16io_matches_the_float_kernels(B, reference_backend, rng, case):
    n, fin, fout = CASES[case]
    assert _splits(B, n, fin, fout) == [case.endswith("split")] * 3
    xb, x = bf16_exact(rng, (n, fin))
    dyb, dy = bf16_exact(rng, (n, fout))
    w = rng.standard_normal((fout, fin)).astype(np.float32)
    b = rng.standard_normal(fout).astype(np.float32)
    bw, bb = B.asarray(w), B.asarray(b)
    for bias, relu in ((bb, True), (None, False), (bb, False)):
        y_float = B.to_numpy(B.linear(B.asarray(x), bw, bias, relu=relu))
        y = B.to_numpy(B.linear(dev16(B, xb), bw, bias, relu=relu))
        assert_bits_equal(y, round_bf16(y_float), f"{case} y bias={bias is not None} "
                                                  f"relu={relu}")
    f = [B.to_numpy(a) for a in B.linear_backward(B.asarray(dy), B.asarray(x), bw)]
    dx, dw, db = (B.to_numpy(a) for a in B.linear_backward(dev16(B, dyb), dev16(B, xb), bw))
    assert_bits_equal(dx, round_bf16(f[0]), f"{case} dx")
    for name, out, want in (("dw", dw, f[1]), ("db", db, f[2])):
        assert out.dtype == np.float32 and np.array_equal(out, want), f"{case} {name}"
    # against float64 (y without bias and ReLU, so the bound's |A||B| covers it)
    y = bf16_to_float32(B.to_numpy(B.linear(dev16(B, xb), bw)))
    R = reference_backend
    exact = [R.linear(*f64(x, w)), *R.linear_backward(*f64(dy, x, w))]
    mags = [R.linear(*f64(np.abs(x), np.abs(w))),
            *R.linear_backward(*f64(np.abs(dy), np.abs(x), np.abs(w)))]
    outs = (y, bf16_to_float32(dx), dw, db)
    for name, o, e, m, K in zip(("y", "dx", "dw", "db"), outs, exact, mags, (fin, fout, n, n)):
        assert_within(o, e, m, bf16_gemm_bound(K), f"{case} {name} vs float64")


@pytest.mark.parametrize("split", [1, 3])
def test_weight_gradient_split_and_not(B, rng, split):
    """dW = dy^T @ x by sgemm_bf16_tn_bf16io, K (the batch) in one part or three: the float
    kernel's dW with the same split, bit for bit (float32 parts, added in order)."""
    n, fin, fout = 150, 21, 19
    dyb, dy = bf16_exact(rng, (n, fout))
    xb, x = bf16_exact(rng, (n, fin))
    got, want = (B.ctx.empty((fout, fin), np.float32) for _ in range(2))
    g16 = plan_gemm(B.ctx, fout, fin, n, trans_a=True, split=split, dtypes=(BF16, BF16, FLOAT32))
    g32 = plan_gemm(B.ctx, fout, fin, n, trans_a=True, split=split)
    assert isinstance(g16, SplitKGemm) == (split > 1) == isinstance(g32, SplitKGemm)
    g16(dev16(B, dyb), dev16(B, xb), got)
    g32(B.asarray(dy), B.asarray(x), want)
    assert np.array_equal(B.to_numpy(got), B.to_numpy(want))


def test_forward_split_and_not(B, rng):
    """y = x @ w^T + b with ReLU, K in one part or three: the bf16 C of a split is its float
    sum rounded once, the unsplit kernel's store."""
    n, fin, fout = 6, 200, 9
    xb, x = bf16_exact(rng, (n, fin))
    w = B.asarray(rng.standard_normal((fout, fin)).astype(np.float32))
    b = B.asarray(rng.standard_normal(fout).astype(np.float32))
    outs = []
    for split in (1, 3):
        g16 = plan_gemm(B.ctx, n, fout, fin, trans_b=True, has_bias=True, relu=True,
                        split=split, dtypes=(BF16, FLOAT32, BF16))
        g32 = plan_gemm(B.ctx, n, fout, fin, trans_b=True, has_bias=True, relu=True,
                        split=split)
        assert isinstance(g16, SplitKGemm) == (split > 1)
        y16, y32 = B.ctx.empty((n, fout), BF16), B.ctx.empty((n, fout), np.float32)
        g16(dev16(B, xb), w, y16, b)
        g32(B.asarray(x), w, y32, b)
        outs.append(B.to_numpy(y16))
        assert_bits_equal(outs[-1], round_bf16(B.to_numpy(y32)), f"split={split}")
    assert (bf16_to_float32(outs[0]) != 0).any()


def test_non_finite_and_signed_zero(B, rng):
    """NaN, +-inf and -0.0 in x and dy: still the float kernels' results rounded (a NaN
    output is 0x7FFF in both)."""
    n, fin, fout = CASES["small_ragged"]
    xb, _ = bf16_exact(rng, (n, fin))
    dyb, _ = bf16_exact(rng, (n, fout))
    for bits in (xb, dyb):
        bits.reshape(-1)[[0, 6, 13, 40]] = [0x7FC0, 0x7F80, 0xFF80, 0x8000]
    x, dy = bf16_to_float32(xb), bf16_to_float32(dyb)
    w = B.asarray(rng.standard_normal((fout, fin)).astype(np.float32))
    b = B.asarray(rng.standard_normal(fout).astype(np.float32))
    y_float = B.to_numpy(B.linear(B.asarray(x), w, b, relu=True))
    assert np.isnan(y_float).any()
    assert_bits_equal(B.to_numpy(B.linear(dev16(B, xb), w, b, relu=True)), round_bf16(y_float),
                      "y")
    f = B.linear_backward(B.asarray(dy), B.asarray(x), w)
    h = B.linear_backward(dev16(B, dyb), dev16(B, xb), w)
    assert_bits_equal(B.to_numpy(h[0]), round_bf16(B.to_numpy(f[0])), "dx")
    for name, out, want in zip(("dw", "db"), h[1:], f[1:]):
        out, want = B.to_numpy(out), B.to_numpy(want)
        assert np.isnan(out).any() and np.array_equal(out, want, equal_nan=True), name


def test_gradients_into_given_buffers(B, rng):
    """dw_out / db_out (a model's flat gradient buffer) receive the float32 gradients."""
    n, fin, fout = CASES["small_ragged"]
    xb, _ = bf16_exact(rng, (n, fin))
    dyb, _ = bf16_exact(rng, (n, fout))
    w = B.asarray(rng.standard_normal((fout, fin)).astype(np.float32))
    flat = B.ctx.empty((fout * fin + fout,), np.float32)
    dw, db = flat[:fout * fin].reshape(fout, fin), flat[fout * fin:]
    plan = linear.linear_backward_plan(B, dev16(B, dyb), dev16(B, xb), w)
    dx, dw2, db2 = plan.run(dev16(B, dyb), dev16(B, xb), w, dw, db)
    want = B.linear_backward(dev16(B, dyb), dev16(B, xb), w)
    assert dx.dtype == np.uint16 and dw2 is dw and db2 is db
    assert np.array_equal(B.to_numpy(flat), np.concatenate(
        [B.to_numpy(want[1]).ravel(), B.to_numpy(want[2])]))


def test_float_and_bf16_calls_get_plans_of_their_own(B, rng):
    n, fin, fout = CASES["small_ragged"]
    xb, x = bf16_exact(rng, (n, fin))
    w = B.asarray(rng.standard_normal((fout, fin)).astype(np.float32))
    B.forget_plans()
    y32 = B.linear(B.asarray(x), w)
    y16 = B.linear(dev16(B, xb), w)
    again = B.linear(B.asarray(x), w)
    assert (y32.dtype, y16.dtype, again.dtype) == (np.float32, np.uint16, np.float32)
    dtypes = [key[-1] for key in B.plans if getattr(key[0], "name", "") == "linear"]
    assert sorted(map(str, dtypes)) == ["float32", "uint16"]


def test_refusals(B, rng):
    n, fin, fout = CASES["small_ragged"]
    xb, x = bf16_exact(rng, (n, fin))
    dyb, dy = bf16_exact(rng, (n, fout))
    w = B.asarray(rng.standard_normal((fout, fin)).astype(np.float32))
    with pytest.raises(TypeError, match=r"linear: x has dtype float32 and dy uint16"):
        B.linear_backward(dev16(B, dyb), B.asarray(x), w)
    with pytest.raises(TypeError, match=r"linear: x has dtype uint16 and dy float32"):
        B.linear_backward(B.asarray(dy), dev16(B, xb), w)
    # weights and bias stay float32
    w16 = dev16(B, round_bf16(np.ones((fout, fin), np.float32)))
    with pytest.raises(TypeError, match="w must have dtype float32, got uint16"):
        B.linear(dev16(B, xb), w16)
    with pytest.raises(TypeError, match="w must have dtype float32, got uint16"):
        B.linear_backward(dev16(B, dyb), dev16(B, xb), w16)
    with pytest.raises(TypeError, match="b must have dtype float32, got uint16"):
        B.linear(dev16(B, xb), w, dev16(B, np.zeros(fout, np.uint16)))
    # the GEMMs without a kernel
    f, s = FLOAT32, BF16
    with pytest.raises(TypeError, match=r"no tt kernel"):
        plan_gemm(B.ctx, 4, 4, 4, trans_a=True, trans_b=True, dtypes=(s, s, f))
    with pytest.raises(TypeError, match=r"no nt kernel"):
        plan_gemm(B.ctx, 4, 4, 4, trans_b=True, dtypes=(f, s, s))
    with pytest.raises(TypeError, match=r"need precision bf16, not tf32"):
        gemm_io_suffix(False, True, (s, f, s), "tf32")
    with pytest.raises(ValueError, match=r"beta != 0 needs a float32 C"):
        SgemmLaunch(B.ctx, 4, 4, 4, 4, 4, 4, trans_b=True, beta=1.0, dtypes=(s, f, s))
    assert gemm_io_suffix(False, False, (f, f, f), "fp32") == ""


@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_other_precisions_refuse_bf16_activations(device_precision, rng, precision):
    D = device_precision(precision)
    xb, _ = bf16_exact(rng, (2, 3))
    w = D.asarray(rng.standard_normal((4, 3)).astype(np.float32))
    msg = (rf"uint16, which the ops read as bf16 activations under precision bf16 only; "
           rf"the \w+ backend computes in {precision}")
    with pytest.raises(TypeError, match=msg):
        D.linear(D.asarray(xb, BF16), w)
    with pytest.raises(TypeError, match=msg):
        D.linear_backward(D.asarray(round_bf16(np.ones((2, 4), np.float32)), BF16),
                          D.asarray(xb, BF16), w)


def test_numpy_refuses_and_reference_rounds_uint16(rng):
    """numpy computes in fp32 only: uint16 is refused; the reference's linear on bf16 bits
    is its float definition on the widened values with y and dx rounded once."""
    N = get_backend("numpy")
    with pytest.raises(TypeError, match="x must have dtype float32 or float64, got uint16"):
        N.linear(np.zeros((2, 3), np.uint16), np.zeros((4, 3), np.float32))
    R = get_backend("reference", precision="bf16")
    xb, x = bf16_exact(rng, (3, 5))
    dyb, dy = bf16_exact(rng, (3, 4))
    w = rng.standard_normal((4, 5)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    for bias, relu in ((b, True), (None, False)):
        y = R.linear(xb, w, bias, relu=relu)
        assert y.dtype == np.uint16
        assert np.array_equal(y, round_bf16(R.linear(x, w, bias, relu=relu)))
    dx, dw, db = R.linear_backward(dyb, xb, w)
    f = R.linear_backward(dy, x, w)
    assert dx.dtype == np.uint16 and np.array_equal(dx, round_bf16(f[0]))
    assert dw.dtype == db.dtype == np.float32
    assert np.array_equal(dw, f[1]) and np.array_equal(db, f[2])


def _function_macro(text, name):
    m = re.search(rf"(?m)^[ \t]*#[ \t]*define[ \t]+{name}\(EA, EB, EC\)((?:[^\n]*\\\n)*[^\n]*)",
                  strip_comments(text))
    assert m, name
    return " ".join(m.group(1).replace("\\\n", " ").split())


def test_spelled_out_parameter_lists_are_the_template():
    """sgemm_params.cuh spells the parameter list out per element types (the toolchain parser
    expands only object-like macros): each is SGEMM_PARAMS_OF(EA, EB, EC)."""
    text = (kernel_dir() / "sgemm_params.cuh").read_text()
    macros = object_macros(text)
    template = _function_macro(text, "SGEMM_PARAMS_OF")
    f, s = "float", "bf16_bits"
    for name, types in (("SGEMM_PARAMS", (f, f, f)), ("SGEMM_BF16_AC_PARAMS", (s, f, s)),
                        ("SGEMM_BF16_A_PARAMS", (s, f, f)), ("SGEMM_BF16_AB_PARAMS", (s, s, f))):
        want = template
        for param, t in zip(("EA", "EB", "EC"), types):
            want = re.sub(rf"\b{param}\b", t, want)
        assert macros[name].replace(" ", "") == want.replace(" ", ""), name


def test_bf16_kernels_are_declared_as_the_bf16_ones():
    """Every BF16_GEMMS kernel exists, with the annotations of its float-activation BF16
    kernel, and takes uint16 exactly where the table says bf16."""
    decls, sigs = kernel_decls(), kernel_signatures()
    for (xy, dtypes), suffix in BF16_GEMMS.items():
        old, new = decls[f"sgemm_bf16_{xy}"], decls[f"sgemm_bf16_{xy}{suffix}"]
        assert (new.tc, new.gemm, new.block, new.max_regs) == (
            old.tc, old.gemm, old.block, old.max_regs) == ("bf16", "report", old.block, 128)
        params = [p.dtype for p in sigs[new.name][:3]]
        assert params == [np.dtype(d) for d in dtypes], (xy, suffix, params)
    assert decls["bias_grad_rows_bf16io"].block == decls["bias_grad_rows"].block


def test_cublas_comparison_path_widens_and_rounds(B, rng):
    """GPUCNN_CUBLAS=1 (``xp.matmul``): bf16 x and dy are widened exactly, y and dx are the
    float32 path's rounded once, dw and db are the float32 path's."""
    n, fin, fout = CASES["small_ragged"]
    xb, x = bf16_exact(rng, (n, fin))
    dyb, dy = bf16_exact(rng, (n, fout))
    w = B.asarray(rng.standard_normal((fout, fin)).astype(np.float32))
    b = B.asarray(rng.standard_normal(fout).astype(np.float32))
    B.use_cublas = True
    try:
        y16 = B.to_numpy(B.linear(dev16(B, xb), w, b, relu=True))
        y32 = B.to_numpy(B.linear(B.asarray(x), w, b, relu=True))
        g16 = [B.to_numpy(a) for a in B.linear_backward(dev16(B, dyb), dev16(B, xb), w)]
        g32 = [B.to_numpy(a) for a in B.linear_backward(B.asarray(dy), B.asarray(x), w)]
    finally:
        B.use_cublas = False
    assert_close(y32, np.maximum(x @ B.to_numpy(w).T + B.to_numpy(b), 0), 1e-5, "y")
    assert_bits_equal(y16, round_bf16(y32), "y")
    assert_bits_equal(g16[0], round_bf16(g32[0]), "dx")
    for name, out, want in zip(("dw", "db"), g16[1:], g32[1:]):
        assert out.dtype == np.float32 and np.array_equal(out, want), name


def _bf16_at(B, bits, shift):
    """``bits`` on the device starting ``shift`` elements (2 bytes each) past a 16-byte
    boundary."""
    store = B.asarray(np.zeros(bits.size + 16, np.uint16), BF16)
    i = (-(array_address(store) // 2)) % 8 + shift
    view = store[i:i + bits.size]
    view[...] = B.asarray(bits.ravel(), BF16)
    return view.reshape(bits.shape)


@pytest.mark.parametrize("shift", [0, 1])
@pytest.mark.parametrize("split", [1, 2])
def test_whole_chunks_aligned_and_not(B, rng, shift, split):
    """Sizes multiples of 4 (whole chunks inside, ragged tiles), bf16 operands 16-byte aligned
    or 2 bytes off: a bf16 operand is read by scalar loads (vec flag 0; the float weights keep
    their 128-bit loads), and each GEMM gives the float kernel's result (rounded for a bf16
    C), bit for bit."""
    n, fin, fout = 136, 132, 20      # K >= 128 in each product: split 2 is honoured
    xb, x = bf16_exact(rng, (n, fin))
    dyb, dy = bf16_exact(rng, (n, fout))
    w = B.asarray(rng.standard_normal((fout, fin)).astype(np.float32))
    x16, dy16 = _bf16_at(B, xb, shift), _bf16_at(B, dyb, shift)
    f, s = FLOAT32, BF16
    for (M, N, K, ta, tb), a16, b16, a32, b32, c in (
            ((n, fout, fin, False, True), x16, w, B.asarray(x), w, s),      # y
            ((n, fin, fout, False, False), dy16, w, B.asarray(dy), w, s),   # dx
            ((fout, fin, n, True, False), dy16, x16, B.asarray(dy), B.asarray(x), f)):  # dW
        dtypes = (s, s if b16 is x16 else f, c)
        g16 = plan_gemm(B.ctx, M, N, K, ta, tb, split=split, dtypes=dtypes)
        g32 = plan_gemm(B.ctx, M, N, K, ta, tb, split=split)
        assert isinstance(g16, SplitKGemm) == (split == 2)
        launch = g16.parts if split == 2 else g16
        va, vb = launch.args(a16, b16, None)[11:13]
        want_vb = 0 if b16 is x16 else int(vector_ok(w, K if tb else N))
        assert (int(va), int(vb)) == (0, want_vb), (M, N, K, shift)
        out16, out32 = B.ctx.empty((M, N), c), B.ctx.empty((M, N), np.float32)
        g16(a16, b16, out16)
        g32(a32, b32, out32)
        want, got = B.to_numpy(out32), B.to_numpy(out16)
        if c == BF16:
            assert_bits_equal(got, round_bf16(want), f"{M}x{N}x{K} shift={shift}")
        else:
            assert np.array_equal(got, want), f"dW shift={shift}"
