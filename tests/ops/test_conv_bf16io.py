"""The implicit-GEMM convolutions with bf16 activations (precision bf16, device backends):
``conv_implicit_{fprop,dgrad,wgrad}_bf16_bf16io`` and ``bias_grad_nchw_bf16io``
(kernels/conv_implicit_tc.cu, conv_reduce.cu), reached through the conv API with uint16
x / dy (bfloat16 bits, gpucnn/ops/storage.py).

The bf16io kernels are the ``_bf16`` kernels' bodies with another activation type: on inputs
that are bf16-exact, the float-activation kernel reads the same float values, multiplies them
in the same order and only its store differs (float32 instead of one rounding to bf16). So,
bit for bit:

    y_bits  == round_bf16(y  of conv_implicit_fprop_bf16 on the same values)
    dx_bits == round_bf16(dx of conv_implicit_dgrad_bf16)
    dW, db  == dW of conv_implicit_wgrad_bf16 (split or not), db of bias_grad_nchw

(the float wgrad may stage dy by 128-bit loads where the bf16io one gathers it element by
element: the same values reach shared memory, so the same products). Against float64, the
bound of tests/ops/test_tensor_cores.py for bf16 (2u + u^2 + K 2^-24, u = 2^-8, of
|| |A||B| ||) plus one more rounding of y and dx to bf16 (u of ||Y||, below u || |A||B| ||).
"""
import re

import numpy as np
import pytest

from gpucnn import get_backend
from gpucnn.ops.conv import conv_geometry, implicit
from gpucnn.ops.precision import bf16_to_float32, round_bf16
from gpucnn.ops.storage import BF16
from bf16_checks import (EMU_BF16_POISON, B, assert_bits_equal, assert_within,  # noqa: F401
                         bf16_exact, bf16_gemm_bound, dev16)
from gpucnn.testing import f64
from gpucnn.toolchain import kernel_decls, kernel_dir
from gpucnn.toolchain.parse import object_macros, strip_comments


# x shape, w shape, geometry. Small batches: the emulator runs every thread.
CASES = {
    "ragged_stride2_pad": ((2, 3, 7, 9), (5, 3, 3, 3), dict(stride=2, padding=1)),
    "groups_dilation": ((2, 4, 8, 7), (6, 2, 3, 2), dict(padding=(2, 1), dilation=2, groups=2)),
    # P = 64: the float wgrad stages dy by 128-bit loads, the bf16io one gathers it
    "vector_dy": ((2, 8, 8, 8), (12, 8, 3, 3), dict(padding=1)),
    # AlexNet's conv2 (grouped 5x5, padding 2) on a 13x13 map, fewer channels
    "alexnet_conv2_like": ((1, 48, 13, 13), (64, 24, 5, 5), dict(padding=2, groups=2)),
    # past one 128 x 128 tile along m and n in all three products
    "two_tiles_each_way": ((2, 130, 10, 10), (131, 130, 1, 1), dict()),
}
SLOW_CASES = {
    # AlexNet's conv1 (11x11, stride 4) on a 67x67 crop
    "alexnet_conv1_like": ((2, 3, 67, 67), (96, 3, 11, 11), dict(stride=4, padding=2)),
}


def run_case(B, reference_backend, rng, xs, ws, kw, what):
    g = conv_geometry(xs, ws, **kw)
    xb, x = bf16_exact(rng, xs)
    dyb, dy = bf16_exact(rng, g.y_shape)
    w = rng.standard_normal(ws).astype(np.float32)
    b = rng.standard_normal(ws[0]).astype(np.float32)
    bw, bb = B.asarray(w), B.asarray(b)
    # forward: bias + ReLU, and neither
    for bias, relu in ((bb, True), (None, False)):
        y_float = B.to_numpy(B.conv2d(B.asarray(x), bw, bias, relu=relu, algo="implicit", **kw))
        y = B.conv2d(dev16(B, xb), bw, bias, relu=relu, **kw)
        assert_bits_equal(B.to_numpy(y), round_bf16(y_float), f"{what} y relu={relu}")
    # backward
    f = [B.to_numpy(a) for a in B.conv2d_backward(B.asarray(dy), B.asarray(x), bw,
                                                  algo="implicit", **kw)]
    dx, dw, db = (B.to_numpy(a) for a in B.conv2d_backward(dev16(B, dyb), dev16(B, xb), bw,
                                                           **kw))
    assert_bits_equal(dx, round_bf16(f[0]), f"{what} dx")
    for name, out, want in (("dw", dw, f[1]), ("db", db, f[2])):
        assert out.dtype == np.float32 and np.array_equal(out, want), f"{what} {name}"
    # against float64 (y with bias and ReLU off, so the bound's |A||B| covers it)
    y = bf16_to_float32(B.to_numpy(B.conv2d(dev16(B, xb), bw, None, **kw)))
    exact = [reference_backend.conv2d(*f64(x, w), **kw),
             *reference_backend.conv2d_backward(*f64(dy, x, w), **kw)]
    mags = [reference_backend.conv2d(*f64(np.abs(x), np.abs(w)), **kw),
            *reference_backend.conv2d_backward(*f64(np.abs(dy), np.abs(x), np.abs(w)), **kw)]
    lengths = (g.K, g.Fg * g.kh * g.kw, g.N * g.Ho * g.Wo, g.N * g.Ho * g.Wo)
    outs = (y, bf16_to_float32(dx), dw, db)
    for name, o, e, m, K in zip(("y", "dx", "dw", "db"), outs, exact, mags, lengths):
        assert_within(o, e, m, bf16_gemm_bound(K), f"{what} {name} vs float64")


@pytest.mark.parametrize("case", sorted(CASES))
def test_bf16io_matches_the_float_kernels(B, reference_backend, rng, case):
    run_case(B, reference_backend, rng, *CASES[case], case)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(SLOW_CASES))
def test_bf16io_matches_the_float_kernels_large(B, reference_backend, rng, case):
    run_case(B, reference_backend, rng, *SLOW_CASES[case], case)


def test_bf16io_weight_gradient_split(B, rng, monkeypatch):
    """The split over grid z (float32 partial sums, added in order) gives the float
    kernel's dW bit for bit, as the unsplit launch does."""
    # 5 * 64 positions: 20 slices, enough for two parts (at least 8 slices each); P = 64,
    # so the float kernel stages dy by 128-bit loads
    xs, ws, kw = (5, 8, 8, 8), (12, 8, 3, 3), dict(padding=1)
    g = conv_geometry(xs, ws, **kw)
    xb, x = bf16_exact(rng, xs)
    dyb, dy = bf16_exact(rng, g.y_shape)
    w = B.asarray(rng.standard_normal(ws).astype(np.float32))
    for target, split in ((10 ** 6, True), (1, False)):
        monkeypatch.setattr(B, "dw_target_blocks", target, raising=False)
        parts, _ = implicit.wgrad_split(g, B.workspace_bytes, target, "bf16")
        assert (parts > 1) == split
        want = B.conv2d_backward(B.asarray(dy), B.asarray(x), w, need_dx=False,
                                 algo="implicit", **kw)[1]
        dw = B.conv2d_backward(dev16(B, dyb), dev16(B, xb), w, need_dx=False, **kw)[1]
        assert np.array_equal(B.to_numpy(dw), B.to_numpy(want)), f"parts={parts}"


def test_bf16io_non_finite_and_signed_zero(B, rng):
    """NaN, +-inf and -0.0 in x and dy: still the float kernels' results rounded (a NaN
    output is 0x7FFF in both)."""
    xs, ws, kw = CASES["ragged_stride2_pad"]
    g = conv_geometry(xs, ws, **kw)
    xb, _ = bf16_exact(rng, xs)
    dyb, _ = bf16_exact(rng, g.y_shape)
    for bits in (xb, dyb):
        flat = bits.reshape(-1)
        flat[[0, 5, 17, 40]] = [0x7FC0, 0x7F80, 0xFF80, 0x8000]   # NaN, inf, -inf, -0.0
    x, dy = bf16_to_float32(xb), bf16_to_float32(dyb)
    w = B.asarray(rng.standard_normal(ws).astype(np.float32))
    y_float = B.to_numpy(B.conv2d(B.asarray(x), w, relu=True, algo="implicit", **kw))
    assert np.isnan(y_float).any()
    assert_bits_equal(B.to_numpy(B.conv2d(dev16(B, xb), w, relu=True, **kw)),
                      round_bf16(y_float), "y")
    f = B.conv2d_backward(B.asarray(dy), B.asarray(x), w, algo="implicit", **kw)
    h = B.conv2d_backward(dev16(B, dyb), dev16(B, xb), w, **kw)
    assert_bits_equal(B.to_numpy(h[0]), round_bf16(B.to_numpy(f[0])), "dx")
    for name, out, want in zip(("dw", "db"), h[1:], f[1:]):
        out, want = B.to_numpy(out), B.to_numpy(want)
        assert np.array_equal(out, want, equal_nan=True), name


def test_outputs_are_poisoned_on_emu(B):
    """ctx.empty fills a uint16 output with EMU_BF16_POISON on emu: the bit-equality checks above
    then fail for any element a kernel skips."""
    if B.name != "emu":
        pytest.skip("poisoned outputs are the emulator's")
    assert np.all(B.to_numpy(B.ctx.empty((3,), BF16)) == EMU_BF16_POISON)


def test_float_and_bf16_calls_get_plans_of_their_own(B, rng):
    xs, ws, kw = CASES["ragged_stride2_pad"]
    xb, x = bf16_exact(rng, xs)
    w = B.asarray(rng.standard_normal(ws).astype(np.float32))
    B.forget_plans()
    y32 = B.conv2d(B.asarray(x), w, algo="implicit", **kw)
    y16 = B.conv2d(dev16(B, xb), w, **kw)
    again = B.conv2d(B.asarray(x), w, algo="implicit", **kw)
    assert (y32.dtype, y16.dtype, again.dtype) == (np.float32, np.uint16, np.float32)
    dtypes = [key[-1] for key in B.plans if getattr(key[0], "name", "") == "conv2d"]
    assert sorted(map(str, dtypes)) == ["float32", "uint16"]


def test_auto_runs_implicit_and_records_it(B, rng, monkeypatch):
    """bf16 activations run on implicit GEMM whatever auto or $GPUCNN_CONV_ALGO would pick
    (a 1x1 unpadded layer: auto picks im2col for float32), and the choice is recorded (the
    metrics' and checkpoints' conv_algorithms)."""
    xs, ws = (1, 4, 5, 5), (3, 4, 1, 1)
    xb, _ = bf16_exact(rng, xs)
    w = B.asarray(rng.standard_normal(ws).astype(np.float32))
    before = dict(B.conv_algorithms())
    for env in ("", "im2col"):
        monkeypatch.setenv("GPUCNN_CONV_ALGO", env)
        for algo in (None, "auto", "implicit"):
            assert B.conv2d(dev16(B, xb), w, algo=algo).dtype == np.uint16
    added = {k: v for k, v in B.conv_algorithms().items() if before.get(k) != v}
    assert list(added.values()) == ["implicit"] and "k1x1" in next(iter(added)), added


def test_refusals(B, rng):
    xs, ws, kw = CASES["ragged_stride2_pad"]
    g = conv_geometry(xs, ws, **kw)
    xb, x = bf16_exact(rng, xs)
    dyb, dy = bf16_exact(rng, g.y_shape)
    w = B.asarray(rng.standard_normal(ws).astype(np.float32))
    # another algorithm named per call
    with pytest.raises(ValueError, match=r"algo='im2col'.*implicit GEMM"):
        B.conv2d(dev16(B, xb), w, algo="im2col", **kw)
    with pytest.raises(ValueError, match=r"algo='im2col'.*implicit GEMM"):
        B.conv2d_backward(dev16(B, dyb), dev16(B, xb), w, algo="im2col", **kw)
    # mixed activations
    with pytest.raises(TypeError, match=r"x has dtype uint16 and dy float32"):
        B.conv2d_backward(B.asarray(dy), dev16(B, xb), w, **kw)
    with pytest.raises(TypeError, match=r"x has dtype float32 and dy uint16"):
        B.conv2d_backward(dev16(B, dyb), B.asarray(x), w, **kw)
    # weights stay float32
    with pytest.raises(TypeError, match="w must have dtype"):
        B.conv2d(dev16(B, xb), dev16(B, round_bf16(np.ones(ws, np.float32))), **kw)


@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_other_precisions_refuse_bf16_activations(device_precision, rng, precision):
    D = device_precision(precision)
    xb, _ = bf16_exact(rng, (1, 2, 5, 5))
    w = D.asarray(rng.standard_normal((3, 2, 3, 3)).astype(np.float32))
    with pytest.raises(TypeError, match=rf"uint16, which the ops read as bf16 activations "
                                        rf"under precision bf16 only; the \w+ backend "
                                        rf"computes in {precision}"):
        D.conv2d(D.asarray(xb, BF16), w)


def test_numpy_refuses_and_reference_rounds_uint16(rng):
    """numpy computes in fp32 only: uint16 is refused; the reference's conv on bf16 bits is
    its float definition on the widened values with the output rounded once."""
    N = get_backend("numpy")
    with pytest.raises(TypeError, match="x must have dtype float32 or float64, got uint16"):
        N.conv2d(np.zeros((1, 2, 5, 5), np.uint16), np.zeros((3, 2, 3, 3), np.float32))
    R = get_backend("reference", precision="bf16")
    xb = round_bf16(rng.standard_normal((1, 2, 5, 5)).astype(np.float32))
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    y = R.conv2d(xb, w, relu=True)
    assert y.dtype == np.uint16
    assert np.array_equal(y, round_bf16(R.conv2d(bf16_to_float32(xb), w, relu=True)))


def _function_macro(text, name):
    m = re.search(rf"(?m)^[ \t]*#[ \t]*define[ \t]+{name}\(A\)((?:[^\n]*\\\n)*[^\n]*)",
                  strip_comments(text))
    assert m, name
    return " ".join(m.group(1).replace("\\\n", " ").split())


def test_spelled_out_parameter_lists_are_the_templates():
    """conv_implicit.cuh spells each kernel parameter list out per activation type (the
    toolchain parser expands only object-like macros): each is CONV_*_PARAMS_OF(A)."""
    text = (kernel_dir() / "conv_implicit.cuh").read_text()
    macros = object_macros(text)
    for op in ("FPROP", "DGRAD", "WGRAD"):
        template = _function_macro(text, f"CONV_{op}_PARAMS_OF")
        for name, act in ((f"CONV_{op}_PARAMS", "float"), (f"CONV_{op}_BF16IO_PARAMS",
                                                          "bf16_bits")):
            want = re.sub(r"\bA\b", act, template)
            assert macros[name].replace(" ", "") == want.replace(" ", ""), name


def test_bf16io_kernels_are_declared_as_the_bf16_ones():
    decls = kernel_decls()
    for op in ("fprop", "dgrad", "wgrad"):
        old, new = decls[f"conv_implicit_{op}_bf16"], decls[f"conv_implicit_{op}_bf16_bf16io"]
        assert (new.tc, new.gemm, new.block, new.max_regs) == (old.tc, old.gemm, old.block,
                                                               old.max_regs) == (
            "bf16", "report", old.block, 255)
    assert decls["bias_grad_nchw_bf16io"].block == decls["bias_grad_nchw"].block
