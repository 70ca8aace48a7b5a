"""Local response normalisation (gpucnn/ops/lrn.py, kernels/lrn.cu): the reference by its
definition and finite differences; the kernels (emu, three thread orders) against it."""
import numpy as np
import pytest

from gpucnn.ops import lrn
from gpucnn.testing import assert_close, f64, numeric_grad, randn, rel_error

TOL = 1e-5


def test_reference_matches_definition(rng):
    x = rng.standard_normal((1, 6, 2, 2))
    size, alpha, beta, k = 4, 0.3, 0.75, 2.0
    y, _ = lrn.local_response_norm_reference(x, size, alpha, beta, k)
    ref = np.empty_like(x)
    for c in range(6):
        lo, hi = max(0, c - size // 2), min(6, c + (size - 1) // 2 + 1)
        ref[:, c] = x[:, c] / (k + alpha / size * (x[:, lo:hi] ** 2).sum(1)) ** beta
    assert rel_error(y, ref) < 1e-12


@pytest.mark.parametrize("size", [5, 4, 1])
def test_reference_gradient(rng, size):
    x = rng.standard_normal((2, 7, 3, 3))
    args = (size, 1e-1, 0.75, 2.0)  # a large alpha so the cross-channel term matters
    y, scale = lrn.local_response_norm_reference(x, *args)
    cot = rng.standard_normal(y.shape)
    dx = lrn.local_response_norm_backward_reference(cot, x, y, scale, *args)
    num = numeric_grad(lambda: lrn.local_response_norm_reference(x, *args)[0], x, cot)
    assert rel_error(dx, num) < 1e-7


@pytest.mark.parametrize("shape,size,alpha,beta,k", [
    ((2, 7, 3, 4), 5, 1e-4, 0.75, 2.0),  # AlexNet's constants
    ((2, 7, 3, 4), 5, 0.5, 0.75, 1.0),   # strong enough that the cross-channel term matters
    ((1, 6, 2, 3), 4, 0.3, 0.6, 1.5),    # even size: a lopsided window
    ((2, 3, 2, 2), 7, 0.2, 0.75, 1.0),   # window wider than the channel count
    ((1, 5, 3, 3), 1, 0.1, 0.5, 1.0),
])
def test_device_matches_reference(device_backend, reference_backend, rng, shape, size, alpha,
                                  beta, k):
    B, R = device_backend, reference_backend
    x = randn(rng, *shape)
    y, scale = B.local_response_norm(B.asarray(x), size, alpha, beta, k)
    y_ref, scale_ref = R.local_response_norm(f64(x)[0], size, alpha, beta, k)
    assert_close(B.to_numpy(scale), scale_ref, TOL, "scale")
    assert_close(B.to_numpy(y), y_ref, TOL, "y")
    dy = randn(rng, *shape)
    dx = B.local_response_norm_backward(B.asarray(dy), B.asarray(x), y, scale, size, alpha,
                                        beta, k)
    dx_ref = R.local_response_norm_backward(*f64(dy, x), y_ref, scale_ref, size, alpha, beta, k)
    assert_close(B.to_numpy(dx), dx_ref, TOL, "dx")


@pytest.mark.parametrize("size", [3, 4])
def test_device_backward_is_the_gradient(device_backend, rng, size):
    """The kernel's dx against central differences of the float64 reference forward."""
    B = device_backend
    alpha, beta, k = 0.4, 0.75, 1.0
    x = randn(rng, 1, 5, 2, 2)
    dy = randn(rng, *x.shape)
    y, scale = B.local_response_norm(B.asarray(x), size, alpha, beta, k)
    dx = B.local_response_norm_backward(B.asarray(dy), B.asarray(x), y, scale, size, alpha,
                                        beta, k)
    x64, dy64 = f64(x, dy)
    num = numeric_grad(lambda: lrn.local_response_norm_reference(x64, size, alpha, beta, k)[0],
                       x64, dy64)
    assert_close(B.to_numpy(dx), num, 1e-5, "dx vs finite differences")


# ---- bf16 activations (lrn_*_bf16io; gpucnn/ops/storage.py) --------------------------------
@pytest.mark.parametrize("shape,size,alpha,beta,k", [
    ((2, 7, 3, 4), 5, 0.5, 0.75, 1.0), ((1, 6, 2, 3), 4, 0.3, 0.6, 1.5),
    ((2, 3, 5, 5), 7, 1e-4, 0.75, 2.0)])
def test_bf16_kernels_are_the_float_kernels_rounded(device_bf16, rng, shape, size, alpha,
                                                    beta, k):
    """On bf16 inputs the bf16 kernels compute what the float32 ones compute on the same
    values (float32 sums and powers; the backward recomputes y from x and scale as the float
    kernel's forward made it), rounded once: equal bit for bit, scale included."""
    from gpucnn.ops.precision import bf16_to_float32, round_bf16
    B = device_bf16
    xb, dyb = (round_bf16(randn(rng, *shape)) for _ in range(2))
    x, dy = bf16_to_float32(xb), bf16_to_float32(dyb)
    x[0, 0, 0, :2], xb[0, 0, 0, :2] = (-0.0, 0.0), round_bf16(np.float32([-0.0, 0.0]))
    hp = (size, alpha, beta, k)
    y, scale = B.local_response_norm(B.asarray(x), *hp)
    dx = B.local_response_norm_backward(B.asarray(dy), B.asarray(x), y, scale, *hp)
    u16 = lambda a: B.asarray(a, dtype=np.uint16)  # noqa: E731
    yb, scaleb = B.local_response_norm(u16(xb), *hp)
    dxb = B.local_response_norm_backward(u16(dyb), u16(xb), yb, scaleb, *hp)
    assert yb.dtype == dxb.dtype == np.uint16 and scaleb.dtype == np.float32
    for name, got, want in (("y", yb, round_bf16(B.to_numpy(y))),
                            ("scale", scaleb, B.to_numpy(scale)),
                            ("dx", dxb, round_bf16(B.to_numpy(dx)))):
        bad = np.count_nonzero(B.to_numpy(got).view(np.uint16 if name != "scale" else np.uint32)
                               != want.view(np.uint16 if name != "scale" else np.uint32))
        assert bad == 0, f"{name}: {bad} of {want.size} elements differ"


def test_bf16_arguments_must_agree(device_bf16, numpy_backend):
    B = device_bf16
    xb = B.asarray(np.ones((1, 3, 2, 2), np.uint16), dtype=np.uint16)
    yb, scale = B.local_response_norm(xb)
    with pytest.raises(TypeError, match="dy must have dtype uint16, got float32"):
        B.local_response_norm_backward(B.asarray(np.ones((1, 3, 2, 2), np.float32)), xb, yb,
                                       scale)
    with pytest.raises(TypeError, match="x must have dtype .*got uint16"):
        numpy_backend.local_response_norm(np.ones((1, 3, 2, 2), np.uint16))


def test_bf16_reference_is_the_kernels_oracle(device_bf16, rng):
    """The reference on bf16 bits rounds where the kernels do and, as the bf16 backward
    kernel, uses y recomputed from x and scale (not the stored, rounded y): with a strong
    cross-channel term the two agree but for the odd rounding-boundary flip (a widened-y
    reference disagreed on ~25% of dx)."""
    from gpucnn import get_backend
    from gpucnn.ops.precision import bf16_to_float32, round_bf16
    B, R = device_bf16, get_backend("reference", "bf16")
    xb = round_bf16(3 * randn(rng, 4, 16, 8, 8))
    dyb = round_bf16(randn(rng, 4, 16, 8, 8))
    hp = (5, 0.5, 0.75, 1.0)
    u16 = lambda a: B.asarray(a, dtype=np.uint16)  # noqa: E731
    y, scale = B.local_response_norm(u16(xb), *hp)
    yr, scaler = R.local_response_norm(xb, *hp)
    dx = B.to_numpy(B.local_response_norm_backward(u16(dyb), u16(xb), y, scale, *hp))
    dxr = R.local_response_norm_backward(dyb, xb, yr, scaler, *hp)
    for name, got, want in (("y", B.to_numpy(y), yr), ("dx", dx, dxr)):
        bad = np.count_nonzero(got != want)
        err = rel_error(bf16_to_float32(got), bf16_to_float32(want))
        assert bad <= got.size // 100 and err < 2.0 ** -10, f"{name}: {bad} differ, {err:.1e}"
