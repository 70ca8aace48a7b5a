"""conv2d (gpucnn/ops/conv/; kernels/im2col.cu, sgemm.cu, conv_reduce.cu).

1. The plain reference (``ops/conv/reference.py``) against a literal nested-loop definition
   (with its padding computed here, PyTorch's rule for 'same') and by finite differences.
2. The tuned NumPy path (``ops/conv/wide.py``: wide columns, im2col + GEMM; threads, workspace
   slices, the forward->backward column cache) against the reference in float64.
3. The device im2col + SGEMM path (``ops/conv/im2col.py``, ``algo="im2col"``; the implicit
   GEMM one is tests/ops/test_conv_implicit.py) on ``emu`` in three thread orders (or a GPU
   with --device-backend cuda) against the reference in float64; outputs are poisoned on emu.
"""
import numpy as np
import pytest

from gpucnn.backends.numpy_backend import NumpyBackend
from gpucnn.ops.conv import conv_geometry
from gpucnn.ops.conv import im2col as conv_device
from gpucnn.ops.conv import reference as conv_ref
from gpucnn.ops.launch import launch_1d
from gpucnn.testing import assert_close, f64, numeric_grad, randn, to_backend, to_host

TOL = 1e-5
TOL_LARGE_K = 1e-4  # float32 sums of more than 256 products

# name: (N, C, H, W), (F, kh, kw), stride, padding, dilation, groups
SMALL = {
    "basic": ((2, 3, 7, 6), (4, 3, 3), 1, 0, 1, 1),
    "pad": ((2, 3, 9, 11), (5, 3, 3), 1, 1, 1, 1),
    "stride2_pad_batch1": ((1, 2, 9, 9), (3, 3, 3), 2, 1, 1, 1),
    "stride4_rect": ((2, 2, 13, 11), (2, 5, 3), 4, (2, 1), 1, 1),
    "dilation2": ((2, 2, 10, 9), (3, 3, 3), 1, 2, 2, 1),
    "dilation2_groups2": ((2, 4, 9, 8), (4, 3, 3), 1, 2, 2, 2),
    "groups2": ((2, 4, 7, 8), (6, 3, 3), 1, 1, 1, 2),
    "groups3_stride2": ((3, 6, 9, 7), (3, 3, 2), 2, (1, 0), 1, 3),
    "1x1": ((3, 3, 5, 5), (5, 1, 1), 1, 0, 1, 1),
    "1x1_groups": ((2, 4, 5, 5), (6, 1, 1), 1, 0, 1, 2),
    "1x1_stride2_pad": ((2, 3, 7, 6), (4, 1, 1), 2, 1, 1, 1),
    "odd_groups2": ((1, 4, 6, 7), (6, 2, 2), (1, 2), 0, 1, 2),
    "batch1_odd": ((1, 3, 13, 5), (7, 3, 2), (2, 3), (1, 0), 1, 1),
    "rect_dilation": ((2, 2, 11, 12), (3, 2, 3), (1, 2), (0, 3), (3, 2), 1),
    "mixed": ((2, 4, 8, 7), (6, 3, 2), (2, 1), (1, 2), (2, 1), 2),
    # PyTorch's strings; even kernels (and odd dilation x odd k-1) pad one more at the end
    "same_odd": ((2, 2, 6, 7), (3, 3, 3), 1, "same", 1, 1),
    "same_even": ((2, 2, 6, 7), (3, 4, 4), 1, "same", 1, 1),
    "same_rect": ((2, 3, 5, 7), (2, 2, 3), 1, "same", 1, 1),
    "same_dilation2": ((1, 2, 9, 8), (3, 3, 2), 1, "same", 2, 1),
    "same_dilation3_even": ((2, 2, 8, 9), (2, 2, 4), 1, "same", 3, 1),
    "same_groups2": ((2, 4, 5, 6), (4, 2, 3), 1, "same", 1, 2),
    "same_1x1": ((2, 3, 4, 5), (2, 1, 1), 1, "same", 1, 1),
    "valid": ((2, 2, 6, 5), (3, 3, 2), 1, "valid", 1, 1),
}
ALEXNET_CONV1 = {"alexnet_conv1": ((1, 3, 227, 227), (2, 11, 11), 4, 2, 1, 1)}
# stride 1, dilation 1, one group: the wide-column path, at the sizes that pick its chunking
WIDE = {
    "lenet_conv1": ((32, 1, 28, 28), (6, 5, 5), 1, 2, 1, 1),
    "lenet_conv2": ((32, 6, 14, 14), (16, 5, 5), 1, 0, 1, 1),
    "wide_rect_pad": ((5, 3, 6, 8), (2, 3, 1), 1, (0, 2), 1, 1),
    "wide_1x1_out": ((1, 2, 5, 5), (3, 5, 5), 1, 0, 1, 1),
    "wide_1x1_kernel_prime_batch": ((7, 2, 4, 4), (3, 1, 1), 1, 0, 1, 1),
    "wide_k64_blocks": ((64, 8, 10, 10), (8, 3, 3), 1, 1, 1, 1),  # dW on 32-image blocks
    "wide_long_gemm": ((6, 32, 12, 12), (64, 3, 3), 1, 1, 1, 1),  # past the small-GEMM regime
    "wide_long_gemm_prime": ((5, 24, 11, 11), (96, 3, 3), 1, 0, 1, 1),
    "wide_same_even": ((6, 3, 9, 8), (5, 4, 2), 1, "same", 1, 1),
}
CASES = {**SMALL, **ALEXNET_CONV1, **WIDE}


def _inputs(rng, case, dtype=np.float32, bias=True):
    xs, (F, kh, kw), s, p, d, gr = CASES[case]
    x = randn(rng, *xs, dtype=dtype)
    w = randn(rng, F, xs[1] // gr, kh, kw, dtype=dtype)
    b = randn(rng, F, dtype=dtype) if bias else None
    return x, w, b, dict(stride=s, padding=p, dilation=d, groups=gr)


def _tol(x, w, kw, dtype=np.float32):
    """float32 against the float64 reference: looser where a sum runs over > 256 products
    (K for y and dx, the batch x output plane for dw)."""
    if np.dtype(dtype) == np.float64:
        return 1e-12
    g = conv_geometry(x.shape, w.shape, **kw)
    return TOL_LARGE_K if max(g.K, g.N * g.Ho * g.Wo) > 256 else TOL


# ---- 1. the reference ------------------------------------------------------------------------
def _pytorch_pads(padding, k, d):
    """(before, after) per axis, PyTorch's rule, computed independently of conv_geometry."""
    if padding == "valid":
        return [(0, 0), (0, 0)]
    if padding == "same":
        totals = [d[a] * (k[a] - 1) for a in range(2)]
        return [(t // 2, t - t // 2) for t in totals]
    p = (padding, padding) if isinstance(padding, int) else padding
    return [(p[0], p[0]), (p[1], p[1])]


def _literal_conv(x, w, b, stride=1, padding=0, dilation=1, groups=1):
    """y[n, f, ho, wo] = b[f] + sum_{c, i, j} w[f, c, i, j] * xpad[n, f's group c, ...]: an
    explicit zero pad, then a valid convolution, one multiply-add at a time."""
    s = (stride, stride) if isinstance(stride, int) else stride
    d = (dilation, dilation) if isinstance(dilation, int) else dilation
    (t, bo), (le, r) = _pytorch_pads(padding, w.shape[2:], d)
    xp = np.pad(x, ((0, 0), (0, 0), (t, bo), (le, r)))
    N, _, Hp, Wp = xp.shape
    F, Cg, kh, kw = w.shape
    Ho = (Hp - d[0] * (kh - 1) - 1) // s[0] + 1
    Wo = (Wp - d[1] * (kw - 1) - 1) // s[1] + 1
    y = np.zeros((N, F, Ho, Wo))
    for n in range(N):
        for f in range(F):
            c0 = f // (F // groups) * Cg
            for ho in range(Ho):
                for wo in range(Wo):
                    acc = 0.0 if b is None else b[f]
                    for c in range(Cg):
                        for i in range(kh):
                            for j in range(kw):
                                acc += w[f, c, i, j] * xp[n, c0 + c, ho * s[0] + i * d[0],
                                                          wo * s[1] + j * d[1]]
                    y[n, f, ho, wo] = acc
    return y


@pytest.mark.parametrize("case", list(SMALL))
def test_reference_is_the_literal_definition(reference_backend, rng, case):
    x, w, b, kw = _inputs(rng, case, np.float64)
    y = reference_backend.conv2d(x, w, b, **kw)
    assert_close(y, _literal_conv(x, w, b, **kw), 1e-12, f"reference conv2d {case}")
    if kw["padding"] == "same":
        assert y.shape[2:] == x.shape[2:]


@pytest.mark.parametrize("case", list(SMALL))
def test_reference_gradients_by_finite_differences(reference_backend, rng, case):
    B = reference_backend
    x, w, b, kw = _inputs(rng, case, np.float64)
    cot = rng.standard_normal(B.conv2d(x, w, b, **kw).shape)
    dx, dw, db = B.conv2d_backward(cot, x, w, **kw)
    f = lambda: B.conv2d(x, w, b, **kw)  # noqa: E731
    for name, got, arr in (("dx", dx, x), ("dw", dw, w), ("db", db, b)):
        assert_close(got, numeric_grad(f, arr, cot), 1e-7, f"{case} {name}")


def test_same_padding_split_by_hand(reference_backend):
    """A 1x2 kernel: PyTorch pads 0 on the left and 1 on the right (total 1)."""
    x = np.arange(1.0, 6.0).reshape(1, 1, 1, 5)
    w = np.array([10.0, 1.0]).reshape(1, 1, 1, 2)
    y = reference_backend.conv2d(x, w, padding="same")
    np.testing.assert_array_equal(y.ravel(), [12.0, 23.0, 34.0, 45.0, 50.0])
    g = conv_geometry((1, 1, 6, 6), (1, 1, 4, 4), padding="same")
    assert (g.ph, g.ph_end, g.pw, g.pw_end, g.Ho, g.Wo) == (1, 2, 1, 2, 6, 6)
    g = conv_geometry((1, 1, 6, 6), (1, 1, 2, 3), padding="same", dilation=(3, 2))
    assert (g.ph, g.ph_end, g.pw, g.pw_end, g.Ho, g.Wo) == (1, 2, 2, 2, 6, 6)
    assert conv_geometry((1, 1, 6, 5), (1, 1, 3, 2), padding="valid") == conv_geometry(
        (1, 1, 6, 5), (1, 1, 3, 2), padding=0)


# PyTorch warns that it pads a copy for these asymmetric cases: expected here.
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("case", ["same_even", "same_rect", "same_dilation3_even"])
def test_reference_matches_pytorch(reference_backend, rng, case):
    torch = pytest.importorskip("torch")
    B = reference_backend
    x, w, b, kw = _inputs(rng, case, np.float64)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.conv2d(tx, tw, tb, **kw)
    cot = rng.standard_normal(tuple(ty.shape))
    ty.backward(torch.tensor(cot))
    assert_close(B.conv2d(x, w, b, **kw), ty.detach().numpy(), 1e-12, f"{case} y")
    for name, got, t in zip(("dx", "dw", "db"), B.conv2d_backward(cot, x, w, **kw),
                            (tx, tw, tb)):
        assert_close(got, t.grad.numpy(), 1e-12, f"{case} {name}")


@pytest.mark.parametrize("padding,msg", [
    ("Same", "padding must be an int, a pair of ints, 'same' or 'valid', got 'Same'"),
    ("full", "'same' or 'valid', got 'full'"),
    ("", "'same' or 'valid', got ''"),
])
def test_bad_padding_strings(numpy_backend, rng, padding, msg):
    x, w = randn(rng, 1, 2, 6, 6), randn(rng, 3, 2, 3, 3)
    with pytest.raises(ValueError, match=msg):
        numpy_backend.conv2d(x, w, padding=padding)
    with pytest.raises(ValueError, match=msg):
        numpy_backend.conv2d_backward(randn(rng, 1, 3, 6, 6), x, w, padding=padding)


@pytest.mark.parametrize("stride", [2, (1, 2), (3, 1)])
def test_strided_same_is_an_error(numpy_backend, rng, stride):
    x, w = randn(rng, 1, 2, 6, 6), randn(rng, 3, 2, 3, 3)
    with pytest.raises(ValueError, match="padding='same' is not supported for strided "
                                         "convolutions"):
        numpy_backend.conv2d(x, w, stride=stride, padding="same")
    valid = numpy_backend.conv2d(x, w, stride=stride, padding="valid")
    np.testing.assert_array_equal(valid, numpy_backend.conv2d(x, w, stride=stride))


# ---- 2. the tuned NumPy path -----------------------------------------------------------------
# Thread counts and workspaces that change the chunking: one GEMM block per slice (1 byte),
# a few blocks per slice (200 kB), the default.
_NUMPY_VARIANTS = {"t1": dict(threads=1), "t2": dict(threads=2),
                   "t2_ws1": dict(threads=2, workspace_bytes=1),
                   "t1_ws200k": dict(threads=1, workspace_bytes=200_000)}
_numpy_backends = {}


def _numpy_variants(default):
    if not _numpy_backends:
        _numpy_backends.update({k: NumpyBackend(**v) for k, v in _NUMPY_VARIANTS.items()})
    return {"default": default, **_numpy_backends}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", list(CASES))
def test_numpy_matches_reference(numpy_backend, reference_backend, rng, case, dtype):
    x, w, b, kw = _inputs(rng, case, dtype)
    R = reference_backend
    x64, w64, b64 = f64(x, w, b)
    ref = {relu: R.conv2d(x64, w64, b64, **kw, relu=relu) for relu in (False, True)}
    ref_nobias = R.conv2d(x64, w64, **kw)
    dy = randn(rng, *ref[False].shape, dtype=dtype)
    grads = R.conv2d_backward(f64(dy)[0], x64, w64, **kw)
    tol = _tol(x, w, kw, dtype)
    for vname, B in _numpy_variants(numpy_backend).items():
        what = f"{case} {np.dtype(dtype).name} {vname}"
        for relu in (False, True):
            y = B.conv2d(x, w, b, **kw, relu=relu)
            assert y.dtype == dtype and y.flags.c_contiguous
            assert_close(y, ref[relu], tol, f"{what} y relu={relu}")
        assert_close(B.conv2d(x, w, None, **kw), ref_nobias, tol, f"{what} y without bias")
        # the forward above cached its columns: the first backward uses them, the second
        # recomputes them, the partial ones skip a gradient
        for attempt in ("cached", "recomputed"):
            for name, got, r in zip(("dx", "dw", "db"), B.conv2d_backward(dy, x, w, **kw),
                                    grads):
                assert got.dtype == dtype and got.flags.c_contiguous
                assert_close(got, r, tol, f"{what} {name} ({attempt})")
        dx, dw, db = B.conv2d_backward(dy, x, w, **kw, need_dx=False)
        assert dx is None
        assert_close(dw, grads[1], tol, f"{what} dw without dx")
        assert_close(db, grads[2], tol, f"{what} db without dx")
        dx, dw, db = B.conv2d_backward(dy, x, w, **kw, need_dw=False)
        assert dw is None and db is None
        assert_close(dx, grads[0], tol, f"{what} dx without dw")
        assert B.conv2d_backward(dy, x, w, **kw, need_dx=False, need_dw=False) == (
            None, None, None)


@pytest.mark.parametrize("padding", [1, "same"])
def test_numpy_column_cache_is_safe(reference_backend, rng, padding):
    """The forward's columns are reused by backward only for the very same, unchanged x."""
    B = NumpyBackend(threads=1)
    k = 3 if padding == 1 else 4
    x, w = randn(rng, 4, 3, 8, 8), randn(rng, 5, 3, k, k)
    dy = randn(rng, 4, 5, 8, 8)

    def ref_dw(xa):
        return reference_backend.conv2d_backward(*f64(dy, xa, w), padding=padding)[1]

    B.conv2d(x, w, padding=padding)
    x += randn(rng, *x.shape)  # changed in place after the forward
    assert_close(B.conv2d_backward(dy, x, w, padding=padding)[1], ref_dw(x), TOL, "in place")
    B.conv2d(x, w, padding=padding)
    x2 = x.copy()  # another array, the same contents
    assert_close(B.conv2d_backward(dy, x2, w, padding=padding)[1], ref_dw(x2), TOL, "copy")
    B.conv2d(x, w, padding=padding)
    xv = x.reshape(4, 3, 64)[:, :, :].reshape(4, 3, 8, 8)  # a view: another identity
    assert_close(B.conv2d_backward(dy, xv, w, padding=padding)[1], ref_dw(xv), TOL, "view")
    B.conv2d(x, w, padding=padding)
    x3 = randn(rng, *x.shape)  # a forward on x, then a backward on other data of x's shape
    assert_close(B.conv2d_backward(dy, x3, w, padding=padding)[1], ref_dw(x3), TOL, "other")


# ---- 3. the device path ----------------------------------------------------------------------
DEVICE = {**SMALL, **ALEXNET_CONV1}


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("case", list(DEVICE))
def test_device_forward(device_backend, reference_backend, rng, case, relu):
    B = device_backend
    x, w, b, kw = _inputs(rng, case)
    ref = reference_backend.conv2d(*f64(x, w, b), **kw, relu=relu)
    y = B.to_numpy(B.conv2d(*to_backend(B, x, w, b), **kw, relu=relu, algo="im2col"))
    assert y.dtype == np.float32
    assert_close(y, ref, _tol(x, w, kw), f"conv2d {case}")


def test_device_forward_no_bias(device_backend, reference_backend, rng):
    B = device_backend
    for case in ("groups2", "same_even"):
        x, w, _, kw = _inputs(rng, case, bias=False)
        ref = reference_backend.conv2d(*f64(x, w), **kw)
        assert_close(B.to_numpy(B.conv2d(*to_backend(B, x, w), **kw, algo="im2col")), ref,
                     TOL, case)


def _device_backward_check(B, R, rng, case, **need):
    x, w, _, kw = _inputs(rng, case, bias=False)
    dy = randn(rng, *conv_geometry(x.shape, w.shape, **kw).y_shape)
    refs = R.conv2d_backward(*f64(dy, x, w), **kw)
    outs = B.conv2d_backward(*to_backend(B, dy, x, w), **kw, **need, algo="im2col")
    tol = _tol(x, w, kw)
    skipped = {"dx": not need.get("need_dx", True), "dw": not need.get("need_dw", True)}
    skipped["db"] = skipped["dw"]
    for name, out, ref in zip(("dx", "dw", "db"), outs, refs):
        if skipped[name]:
            assert out is None, name
            continue
        out = B.to_numpy(out)
        assert out.dtype == np.float32
        assert_close(out, ref, tol, f"conv2d_backward {case} {name} {need}")


@pytest.mark.parametrize("case", list(DEVICE))
def test_device_backward(device_backend, reference_backend, rng, case):
    _device_backward_check(device_backend, reference_backend, rng, case)


@pytest.mark.parametrize("need", [dict(need_dx=False), dict(need_dw=False)],
                         ids=["no_dx", "no_dw"])
@pytest.mark.parametrize("case", ["groups3_stride2", "1x1_groups", "same_even"])
def test_device_backward_partial(device_backend, reference_backend, rng, case, need):
    _device_backward_check(device_backend, reference_backend, rng, case, **need)


@pytest.mark.parametrize("case", ["pad", "groups3_stride2", "1x1", "same_even"])
def test_device_chunked_and_split(device_backend, reference_backend, rng, monkeypatch, case):
    """One image per workspace chunk (dW accumulated over chunks), with and without the dW
    reduction split over grid z, and the split on the unchunked batch."""
    B = device_backend
    x, w, b, kw = _inputs(rng, case)
    dy = randn(rng, *conv_geometry(x.shape, w.shape, **kw).y_shape)
    y_ref = reference_backend.conv2d(*f64(x, w, b), **kw)
    g_ref = reference_backend.conv2d_backward(*f64(dy, x, w), **kw)
    for ws, target in ((1, 1), (1, 10**6), (1 << 30, 10**6)):
        monkeypatch.setattr(B, "workspace_bytes", ws)
        monkeypatch.setattr(B, "dw_target_blocks", target, raising=False)
        what = f"{case} workspace={ws} dw_target_blocks={target}"
        assert_close(B.to_numpy(B.conv2d(*to_backend(B, x, w, b), **kw, algo="im2col")),
                     y_ref, TOL, what)
        for name, out, ref in zip(("dx", "dw", "db"), to_host(B, *B.conv2d_backward(
                *to_backend(B, dy, x, w), **kw, algo="im2col")), g_ref):
            assert_close(out, ref, TOL, f"{what} {name}")


def test_device_matmul_path(device_backend, reference_backend, rng, monkeypatch):
    """use_cublas (cuda's cuBLAS comparison mode; np.matmul on emu), chunked so dW
    accumulates over chunks."""
    B = device_backend
    monkeypatch.setattr(B, "use_cublas", True)
    monkeypatch.setattr(B, "workspace_bytes", 1)
    for case in ("groups3_stride2", "1x1_groups", "same_even"):
        x, w, b, kw = _inputs(rng, case)
        ref = reference_backend.conv2d(*f64(x, w, b), **kw, relu=True)
        y = B.to_numpy(B.conv2d(*to_backend(B, x, w, b), **kw, relu=True, algo="im2col"))
        assert_close(y, ref, TOL, f"{case} (matmul path)")
        dy = randn(rng, *ref.shape)
        refs = reference_backend.conv2d_backward(*f64(dy, x, w), **kw)
        for out, r in zip(to_host(B, *B.conv2d_backward(*to_backend(B, dy, x, w), **kw,
                                                          algo="im2col")), refs):
            assert_close(out, r, TOL, f"{case} backward (matmul path)")


def test_conv_plan_and_workspace_reuse(device_backend, rng, monkeypatch):
    B = device_backend
    g = conv_geometry((5, 3, 8, 8), (4, 3, 3, 3), padding=1)
    per_image = 3 * 9 * 64 * 4  # C * kh * kw * Ho * Wo floats
    for ws, plan in ((2 * per_image + 7, (False, 2)), (10, (False, 1)), (1 << 30, (False, 5))):
        monkeypatch.setattr(B, "workspace_bytes", ws)
        assert conv_device.conv_plan(B.ctx, g) == plan, ws
    assert conv_device.conv_plan(B.ctx, conv_geometry((5, 3, 8, 8), (4, 3, 1, 1))) == (True, 5)
    assert conv_device.conv_plan(B.ctx, conv_geometry((5, 3, 8, 8), (4, 3, 1, 1), padding="same"))[0]
    assert not conv_device.conv_plan(B.ctx, conv_geometry((5, 3, 8, 8), (4, 3, 1, 1), padding=1))[0]
    assert not conv_device.conv_plan(B.ctx, conv_geometry((5, 3, 8, 8), (4, 3, 1, 1), stride=2))[0]
    # One workspace, reused by later layers and calls that need no more.
    x, w = to_backend(B, randn(rng, 2, 3, 8, 8), randn(rng, 4, 3, 3, 3))
    B.conv2d(x, w, padding=1, algo="im2col")
    buf = B.ctx.buffer(conv_device.WORKSPACE)
    B.conv2d(x[:1].copy(), w, padding=1, algo="im2col")
    B.conv2d_backward(B.conv2d(x, w, padding=1, algo="im2col"), x, w, padding=1,
                      algo="im2col")
    assert buf is not None and B.ctx.buffer(conv_device.WORKSPACE) is buf


def test_dw_split(device_backend, monkeypatch):
    """Few output blocks: the chunk's images are split over grid z, never into empty parts,
    within the workspace's share for partial sums."""
    B = device_backend
    g = conv_geometry((5, 3, 8, 8), (4, 3, 3, 3))  # one 64 x 64 output tile
    monkeypatch.setattr(B, "workspace_bytes", 1 << 30)
    for target, nb, want in ((1, 5, (1, 5)), (512, 5, (5, 1)), (3, 5, (3, 2)), (4, 5, (3, 2)),
                             (512, 1, (1, 1))):
        monkeypatch.setattr(B, "dw_target_blocks", target, raising=False)
        assert conv_device.dw_split(B.ctx, g, nb) == want, (target, nb)
    monkeypatch.setattr(B, "dw_target_blocks", 512, raising=False)
    monkeypatch.setattr(B, "workspace_bytes", 4 * 2 * g.F * g.K * 4)  # room for 2 parts
    assert conv_device.dw_split(B.ctx, g, 5) == (2, 3)


@pytest.mark.parametrize("shapes", [
    ((2, 3, 9, 8), (4, 3, 3, 2), dict(stride=(2, 1), padding=(2, 1), dilation=(1, 2))),
    ((2, 2, 7, 6), (3, 2, 4, 3), dict(padding="same", dilation=(1, 3))),  # asymmetric
], ids=["strided_dilated", "same_asymmetric"])
def test_im2col_col2im_kernels(device_backend, rng, shapes):
    """im2col equals the reference's windows exactly; col2im is its adjoint:
    <im2col(x), c> == <x, col2im(c)>."""
    B = device_backend
    xs, ws, kw = shapes
    x = randn(rng, *xs)
    g = conv_geometry(xs, ws, **kw)
    xpad = np.pad(x, ((0, 0), (0, 0), (g.ph, g.ph_end), (g.pw, g.pw_end)))
    ref = conv_ref.windows(xpad, g).transpose(0, 1, 4, 5, 2, 3).reshape(g.N, -1)
    cols = B.empty((ref.size,))
    launch_1d(B.ctx, "im2col", g.N * g.C * g.Ho * g.Wo, B.asarray(x), cols,
              *conv_device.im2col_args(g, g.N))
    np.testing.assert_array_equal(B.to_numpy(cols).reshape(ref.shape), ref)
    c = randn(rng, ref.size)
    dx = B.empty(x.shape)
    launch_1d(B.ctx, "col2im", x.size, B.asarray(c), dx, *conv_device.im2col_args(g, g.N))
    lhs = float(f64(ref)[0].ravel() @ f64(c)[0])
    rhs = float(f64(x)[0].ravel() @ f64(B.to_numpy(dx))[0].ravel())
    assert abs(lhs - rhs) <= 1e-5 * max(1.0, abs(lhs))


def test_bias_grad_many_channels(device_backend, rng):
    """db's kernel with more channels than blocks (its block-stride loop) and N*Ho*Wo not a
    multiple of the block, through the public backward."""
    B = device_backend
    F = 2 * B.max_blocks + 3
    x, w = randn(rng, 3, 2, 5, 7), randn(rng, F, 2, 1, 1)
    dy = randn(rng, 3, F, 5, 7)
    _, _, db = B.conv2d_backward(*to_backend(B, dy, x, w), need_dx=False, algo="im2col")
    assert_close(B.to_numpy(db), f64(dy)[0].sum(axis=(0, 2, 3)), TOL, "db")


def test_bias_grad_block_is_the_kernels_reduction_tree():
    """bias_grad_nchw launches REDUCE_THREADS threads (its annotation names the #define that
    sizes its shared-memory tree): a power of two."""
    from gpucnn.toolchain import kernel_block, source_defines
    threads = source_defines("conv_reduce.cu", "REDUCE")["THREADS"]
    assert kernel_block("bias_grad_nchw") == threads and threads & (threads - 1) == 0


def test_streamed_blocks_several_per_thread(reference_backend, rng):
    """A layer too large to keep its columns streams them, each thread through several
    blocks of its own (here 2 x 32 images per thread, 10 MiB of columns per block): forward,
    the fused conv + ReLU + max-pool, and both backward passes against the reference."""
    x = randn(rng, 128, 8, 32, 32)
    w = randn(rng, 4, 8, 3, 3)
    b = randn(rng, 4)
    B = NumpyBackend(threads=2, workspace_bytes=1 << 20)  # nothing kept: streamed
    R = reference_backend
    y = B.conv2d(x, w, b, padding=1)
    ref = R.conv2d(*f64(x, w, b), padding=1)
    assert_close(y, ref, TOL_LARGE_K, "y")
    dy = randn(rng, *y.shape)
    got = B.conv2d_backward(dy, x, w, padding=1)
    want = R.conv2d_backward(*f64(dy, x, w), padding=1)
    for name, a, r in zip(("dx", "dw", "db"), got, want):
        assert_close(a, r, TOL_LARGE_K, name)
    yp, sw = B.conv2d_relu_maxpool(x, w, b, padding=1, kernel_size=2, pool_stride=2)
    rp, rsw = R.max_pool2d(np.maximum(ref, 0), 2, 2)
    assert_close(yp, rp, TOL_LARGE_K, "fused y")
    np.testing.assert_array_equal(sw, rsw)
