"""Pooling (gpucnn/ops/pool, kernels/pool.cu): max (switches, dilation), average (divisor
rules), LP; floor and ceil_mode.

The reference is checked against literal nested-loop transcriptions of PyTorch's definitions
(written here independently, output sizes included) and by finite differences; the tuned
numpy path and the kernels (emu, three thread orders) are checked against the reference in
float64; and, where torch is installed, the reference against torch.nn.functional.
"""
import numpy as np
import pytest

from gpucnn.backends.numpy_backend import NumpyBackend
from gpucnn.nn import AvgPool2d, LPPool2d, MaxPool2d, Sequential
from gpucnn.ops.pool import pool_geometry, reference
from gpucnn.testing import assert_close, f64, numeric_grad, randn

TOL = 1e-5  # float32 kernels against the float64 reference


def two(v):
    return tuple(v) if isinstance(v, tuple) else (v, v)


# ---- PyTorch's definitions, transcribed loop by loop (aten/src/ATen/native/Pool.h, the
# CPU max/avg kernels, torch/nn/functional.py lp_pool2d). Max: `val > maxval || isnan(val)`,
# so ties keep the first maximum and a NaN anywhere wins (the last one in window order).
def torch_out_size(size, k, s, p, d, ceil):
    out = (size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil else 0)) // s + 1
    if ceil and (out - 1) * s >= size + p:
        out -= 1
    return out


def literal_max_pool(x, k, s, p, d=1, ceil=False):
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = map(two, (k, s, p, d))
    N, C, H, W = x.shape
    Ho, Wo = torch_out_size(H, kh, sh, ph, dh, ceil), torch_out_size(W, kw, sw, pw, dw, ceil)
    y, idx = np.empty((N, C, Ho, Wo)), np.empty((N, C, Ho, Wo), np.int64)
    for n, c, i, j in np.ndindex(N, C, Ho, Wo):
        best, arg = -np.inf, -1
        for a in range(kh):
            for b in range(kw):
                h, w = i * sh - ph + a * dh, j * sw - pw + b * dw
                inside = 0 <= h < H and 0 <= w < W
                if inside and (arg < 0 or x[n, c, h, w] > best or np.isnan(x[n, c, h, w])):
                    best, arg = x[n, c, h, w], h * W + w
        y[n, c, i, j], idx[n, c, i, j] = best, arg
    return y, idx


def literal_avg_pool(x, k, s, p, ceil=False, count_include_pad=True, divisor_override=None):
    (kh, kw), (sh, sw), (ph, pw) = map(two, (k, s, p))
    N, C, H, W = x.shape
    Ho, Wo = torch_out_size(H, kh, sh, ph, 1, ceil), torch_out_size(W, kw, sw, pw, 1, ceil)
    y = np.empty((N, C, Ho, Wo))
    for n, c, i, j in np.ndindex(N, C, Ho, Wo):
        hs, ws = i * sh - ph, j * sw - pw
        he, we = min(hs + kh, H + ph), min(ws + kw, W + pw)
        pool_size = (he - hs) * (we - ws)
        hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, H), min(we, W)
        total = sum(x[n, c, h, w] for h in range(hs, he) for w in range(ws, we))
        if divisor_override:
            y[n, c, i, j] = total / divisor_override
        elif count_include_pad:
            y[n, c, i, j] = total / pool_size
        else:
            y[n, c, i, j] = total / ((he - hs) * (we - ws))
    return y


def literal_lp_pool(x, p, k, s=None, ceil=False):
    kh, kw = two(k)
    with np.errstate(invalid="ignore"):  # NaN for a negative x and a non-integer p
        out = literal_avg_pool(x ** p, k, k if s is None else s, 0, ceil)
        return (np.sign(out) * np.maximum(np.abs(out), 0) * (kw * kh)) ** (1.0 / p)


# ---- cases: (x shape, kernel, stride, padding, dilation, ceil_mode) --------------------------
MAX_CASES = [
    ((2, 3, 7, 7), 3, 2, 0, 1, False),                 # AlexNet's overlapping 3/2
    ((2, 2, 8, 6), 2, 2, 0, 1, False),
    ((1, 2, 9, 7), 3, 2, 1, 1, False),                 # padding, odd sizes, batch 1
    ((1, 3, 5, 6), (3, 2), (1, 2), (1, 1), 1, False),  # rectangular
    ((2, 2, 7, 5), 2, 3, 0, 1, False),                 # stride > kernel: pixels in no window
    ((2, 2, 7, 7), 2, 2, 0, 1, True),                  # ceil: partial last windows
    ((1, 2, 5, 6), 2, 2, 1, 1, True),                  # ceil: PyTorch drops a window (height)
    ((2, 2, 9, 8), 3, 2, 1, 2, False),                 # dilation with padding
    ((1, 2, 8, 7), (2, 3), (2, 1), (1, 1), (3, 2), True),
    ((1, 1, 2, 2), 3, 2, 0, 1, True),                  # ceil: a window larger than the input
]
# (x shape, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
AVG_CASES = [
    ((2, 3, 7, 7), 3, 2, 1, False, True, None),
    ((1, 2, 6, 8), 2, 2, 0, False, True, None),
    ((2, 2, 5, 7), 3, 1, 1, False, False, None),
    ((1, 3, 9, 6), (3, 2), (2, 1), (1, 1), False, True, None),
    ((2, 2, 8, 9), 3, 2, 1, True, True, None),  # ceil: windows past the right padding
    ((1, 2, 5, 6), 2, 2, 1, True, False, None),
    ((2, 2, 7, 7), 3, 2, 1, True, True, 4),
    ((1, 1, 2, 2), 3, 2, 0, True, True, None),
]
# (x shape, norm_type, kernel, stride, ceil_mode)
LP_CASES = [
    ((2, 3, 6, 6), 2, 2, None, False),  # L2 pooling
    ((2, 2, 7, 7), 2, 3, 2, True),      # ceil: partial windows scaled by kh*kw / n
    ((1, 2, 7, 8), 1, (2, 3), (1, 2), True),
    ((2, 2, 5, 7), 3, 2, None, True),
    ((1, 2, 6, 7), 1.5, 3, 2, False),
    ((1, 2, 5, 5), 0.7, 2, 1, False),
]


def max_kw(case):
    return dict(zip(("kernel_size", "stride", "padding", "dilation", "ceil_mode"), case[1:]))


def avg_kw(case):
    return dict(zip(("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                     "divisor_override"), case[1:]))


def lp_kw(case):
    return dict(zip(("kernel_size", "stride", "ceil_mode"), case[2:]))


def lp_input(rng, shape, p, dtype=np.float64):
    """Signed where x^p is defined for every x (p = 1, 2), else away from zero and positive."""
    x = randn(rng, *shape, dtype=dtype)
    return x if p in (1, 2) else np.abs(x) + dtype(0.3)


def distinct(rng, shape):
    """No ties and no near-ties: the max is differentiable and finite differences are exact."""
    x = rng.permutation(int(np.prod(shape))).reshape(shape).astype(np.float64)
    return x + rng.uniform(-0.1, 0.1, shape)


def pool_input(rng, shape, kind):
    """float32; 'rounded' has many tied maxima, 'plateau' has constant regions too."""
    x = randn(rng, *shape)
    if kind == "rounded":
        x = np.round(x)
    elif kind == "plateau":
        x[:, :, 1:5, 1:4] = 0.25  # every window over it is all ties
        x[:, 0] = -1.5            # a whole constant plane
    return np.ascontiguousarray(x, dtype=np.float32)


# ---- the reference: literal definitions -----------------------------------------------------
@pytest.mark.parametrize("case", MAX_CASES)
def test_max_reference_matches_definition(rng, case):
    x = np.round(rng.standard_normal(case[0]) * 2)  # ties: the first maximum must win
    y, sw = reference.max_pool2d(x, pool_geometry(case[0], **max_kw(case)))
    y_lit, sw_lit = literal_max_pool(x, *case[1:])
    np.testing.assert_array_equal(y, y_lit)
    np.testing.assert_array_equal(sw, sw_lit)
    assert sw.dtype == np.int32


@pytest.mark.parametrize("case", AVG_CASES)
def test_avg_reference_matches_definition(rng, case):
    x = rng.standard_normal(case[0])
    g = pool_geometry(case[0], what="avg_pool2d", **avg_kw(case))
    y = reference.avg_pool2d(x, g)
    assert_close(y, literal_avg_pool(x, *case[1:]), 1e-14, "y")


@pytest.mark.parametrize("case", LP_CASES)
def test_lp_reference_matches_definition(rng, case):
    shape, p = case[:2]
    x = lp_input(rng, shape, p)
    g = pool_geometry(shape, what="lp_pool2d", **lp_kw(case))
    y = reference.lp_pool2d(x, float(p), g)
    assert_close(y, literal_lp_pool(x, p, *case[2:]), 1e-14, "y")


def test_lp_ceil_partial_window_is_scaled_not_summed():
    """PyTorch's (avg * kh*kw)^(1/p): a 1-element corner window of a 2x2 L2 pool gives
    (4 x^2)^(1/2) = 2|x|, not |x|."""
    x = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    g = pool_geometry(x.shape, 2, what="lp_pool2d", ceil_mode=True)
    y = reference.lp_pool2d(x, 2.0, g)
    assert y.shape == (1, 1, 2, 2) and y[0, 0, 1, 1] == 2 * 9.0
    assert y[0, 0, 0, 1] == np.sqrt((3.0 ** 2 + 6.0 ** 2) * 2)


def test_lp_negative_inputs_follow_pow(rng):
    """No abs: x^p of a negative x with a non-integer p is NaN, as is a negative sum's root."""
    x = rng.standard_normal((2, 2, 6, 6))
    x[:, :, :2, :2] = np.abs(x[:, :, :2, :2]) + 0.1  # a window that must stay finite
    x[:, :, 4, 4] = -1.0                             # and one that must not
    for p in (1.5, 3.0):
        y = reference.lp_pool2d(x, p, pool_geometry(x.shape, 2, what="lp_pool2d"))
        lit = literal_lp_pool(x, p, 2)
        assert np.isfinite(y[:, :, 0, 0]).all() and (p != 1.5 or np.isnan(y[:, :, 2, 2]).all())
        assert_close(y, lit, 1e-14, f"y, p={p}")  # NaN exactly where the literal has NaN


# ---- the reference: finite differences ------------------------------------------------------
@pytest.mark.parametrize("case", MAX_CASES)
def test_max_reference_gradient(rng, case):
    x, g = distinct(rng, case[0]), pool_geometry(case[0], **max_kw(case))
    y, sw = reference.max_pool2d(x, g)
    cot = rng.standard_normal(y.shape)
    dx = reference.max_pool2d_backward(cot, sw, g)
    num = numeric_grad(lambda: reference.max_pool2d(x, g)[0], x, cot, eps=1e-4)
    assert_close(dx, num, 1e-8, "dx")


@pytest.mark.parametrize("case", AVG_CASES)
def test_avg_reference_gradient(rng, case):
    x = rng.standard_normal(case[0])
    g = pool_geometry(case[0], what="avg_pool2d", **avg_kw(case))
    cot = rng.standard_normal(g.y_shape)
    num = numeric_grad(lambda: reference.avg_pool2d(x, g), x, cot)
    assert_close(reference.avg_pool2d_backward(cot, g), num, 1e-8, "dx")


@pytest.mark.parametrize("case", LP_CASES)
def test_lp_reference_gradient(rng, case):
    shape, p = case[0], float(case[1])
    x, g = lp_input(rng, shape, p), pool_geometry(shape, what="lp_pool2d", **lp_kw(case))
    y = reference.lp_pool2d(x, p, g)
    cot = rng.standard_normal(y.shape)
    num = numeric_grad(lambda: reference.lp_pool2d(x, p, g), x, cot)
    assert_close(reference.lp_pool2d_backward(cot, x, y, p, g), num, 1e-7, "dx")


def test_lp_gradient_is_zero_where_a_window_sums_to_zero(rng):
    """The stated convention (the true derivative of sqrt at 0 is infinite)."""
    x = lp_input(rng, (1, 2, 6, 6), 0.5)
    x[:, :, :2, :2] = 0.0  # one all-zero 2x2 window per plane; with p < 1, x^(p-1) = inf
    g = pool_geometry(x.shape, 2, what="lp_pool2d")
    for p in (2.0, 0.5):
        y = reference.lp_pool2d(x, p, g)
        dx = reference.lp_pool2d_backward(np.ones_like(y), x, y, p, g)
        assert (dx[:, :, :2, :2] == 0).all() and np.isfinite(dx).all()
        assert (dx[:, :, 2:, 2:] != 0).all()


# ---- max-pool semantics: ties, switches, padding --------------------------------------------
def test_max_ties_pick_first_in_row_major_order(reference_backend):
    R = reference_backend
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 0] = x[0, 0, 0, 1] = 5.0  # a tie in the first 2x2 window: (0,1) comes first
    y, sw = R.max_pool2d(x, 2)
    assert sw[0, 0, 0, 0] == 0 * 4 + 1
    assert sw[0, 0, 0, 1] == 0 * 4 + 2  # all-zero window: its first element
    assert sw[0, 0, 1, 1] == 2 * 4 + 2
    assert y[0, 0, 0, 0] == 5.0
    dx = R.max_pool2d_backward(np.ones_like(y), sw, x.shape, 2)
    assert dx.sum() == 4 and dx[0, 0, 0, 1] == 1 and dx[0, 0, 1, 0] == 0


@pytest.mark.parametrize("fill", [-10.0, -np.inf])
def test_max_switches_point_inside_the_input(reference_backend, rng, fill):
    """-inf padding never wins, even over an input of -inf: the switch is the window's first
    element inside the plane and reads back the pooled value."""
    x = rng.standard_normal((2, 3, 7, 7)) + fill
    for kw in (dict(padding=1), dict(padding=1, dilation=2, ceil_mode=True)):
        y, sw = reference_backend.max_pool2d(x, 3, 2, **kw)
        flat = x.reshape(2, 3, -1)
        assert sw.min() >= 0 and sw.max() < 49
        np.testing.assert_array_equal(np.take_along_axis(flat, sw.reshape(2, 3, -1), 2),
                                      y.reshape(2, 3, -1))


# ---- the tuned numpy path against the reference ---------------------------------------------
@pytest.fixture(scope="module", params=[1, 2], ids=["threads1", "threads2"])
def tuned(request):
    return NumpyBackend(threads=request.param)


# (x shape, kernel, stride, options); the first ones are plain windows: the tuned path
NUMPY_MAX_CASES = [
    ((128, 6, 28, 28), 2, None, {}),   # LeNet pool1
    ((3, 2, 7, 9), 3, 2, {}),          # overlapping windows, odd sizes
    ((2, 3, 9, 8), (2, 3), (3, 2), {}),
    ((2, 2, 5, 5), 1, 1, {}),
    ((2, 2, 9, 9), 2, 3, {}),          # gaps between windows
    ((1, 2, 7, 300), 3, 3, {}),        # wide planes: offsets h * W + w beyond 8 bits
    ((1, 1, 7, 200), 3, 2, {}),        # W < 256 but i * W > 255
    ((1, 1, 4, 600), (1, 2), 2, {}),   # kw == 2 with W > 255
    ((1, 1, 5, 300), (3, 1), 1, {}),   # kw == 1
    ((2, 2, 8, 8), 2, 2, dict(ceil_mode=True)),  # ceil, but the windows fit: still plain
    ((2, 2, 7, 9), 2, 2, dict(ceil_mode=True)),  # ceil overhang: the reference runs
    ((2, 2, 9, 9), 3, 2, dict(padding=1)),
    ((2, 2, 9, 9), 2, 2, dict(dilation=2)),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", NUMPY_MAX_CASES)
def test_numpy_max_pool_matches_reference_with_ties(tuned, reference_backend, rng, case, dtype):
    shape, k, s, kw = case
    B, R = tuned, reference_backend
    # Few distinct values and flat zero regions: ties everywhere (Fashion-MNIST backgrounds).
    x = rng.integers(-2, 3, shape).astype(dtype)
    x[:, :, : shape[2] // 2] = 0.0
    y, sw = B.max_pool2d(x, k, s, **kw)
    y_ref, sw_ref = R.max_pool2d(x, k, s, **kw)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(sw, sw_ref)
    dy = randn(rng, *y.shape, dtype=dtype)
    dx = B.max_pool2d_backward(dy, sw, shape, k, s, **kw)
    assert dx.dtype == dtype
    assert_close(dx, R.max_pool2d_backward(dy, sw_ref, shape, k, s, **kw),
                 1e-13 if dtype == np.float64 else 1e-6, "dx")


def test_numpy_keeps_the_tuned_path_for_lenet_and_alexnet_pools(tuned, rng, monkeypatch):
    """Their pools (with ceil_mode too: the windows fit exactly) never reach the reference;
    a ceil_mode window past the edge does."""
    def fallback(x, g):
        raise AssertionError(f"the reference ran for {g}")

    monkeypatch.setattr(reference, "max_pool2d", fallback)
    for shape, k, s in (((2, 6, 28, 28), 2, None), ((2, 16, 10, 10), 2, None),
                        ((1, 8, 55, 55), 3, 2), ((1, 8, 27, 27), 3, 2), ((1, 8, 13, 13), 3, 2)):
        for ceil in (False, True):
            tuned.max_pool2d(randn(rng, *shape), k, s, ceil_mode=ceil)
    with pytest.raises(AssertionError, match="the reference ran"):
        tuned.max_pool2d(randn(rng, 1, 2, 7, 7), 2, ceil_mode=True)


def nan_windows():
    """(x, y, switches) by PyTorch's rule: a NaN anywhere in a window wins, the last one in
    row-major window order when there are several; infinities compare as numbers."""
    x = np.zeros((1, 1, 4, 6), np.float32)
    x[0, 0, 0, 1] = np.nan          # window (0, 0): NaN after a number -> NaN at 1
    x[0, 0, 0, 2] = np.nan          # window (0, 1): NaN first, then 5 -> still NaN at 2
    x[0, 0, 0, 3] = 5.0
    x[0, 0, 0, 4] = np.nan          # window (0, 2): two NaNs -> the last one, at 10
    x[0, 0, 1, 4] = np.nan
    x[0, 0, 2:, :4] = -np.inf
    x[0, 0, 3, 3] = np.inf          # window (1, 1): inf wins over -inf
    y = np.array([[[[np.nan, np.nan, np.nan], [-np.inf, np.inf, 0]]]], np.float32)
    sw = np.array([[[[1, 2, 10], [12, 21, 16]]]], np.int32)
    return x, y, sw


def test_max_pool_nan_wins_as_in_pytorch(tuned, reference_backend):
    x, y_want, sw_want = nan_windows()
    lit_y, lit_sw = literal_max_pool(x.astype(np.float64), 2, 2, 0)
    np.testing.assert_array_equal(lit_y, y_want)  # assert_array_equal: NaN equals NaN
    np.testing.assert_array_equal(lit_sw, sw_want)
    for B in (reference_backend, tuned):
        y, sw = B.max_pool2d(x, 2)
        np.testing.assert_array_equal(y, y_want, err_msg=B.name)
        np.testing.assert_array_equal(sw, sw_want, err_msg=B.name)
        dx = B.max_pool2d_backward(np.ones(y.shape, np.float32), sw, x.shape, 2)
        assert dx.reshape(-1)[sw_want.reshape(-1)].tolist() == [1] * 6  # gradient to the NaN


# ---- the kernels (emu in three thread orders) against the reference -------------------------
@pytest.mark.parametrize("kind", ["randn", "rounded", "plateau"])
@pytest.mark.parametrize("case", MAX_CASES)
def test_device_max_pool(device_backend, reference_backend, rng, case, kind):
    B, R, kw = device_backend, reference_backend, max_kw(case)
    x = pool_input(rng, case[0], kind)
    y, sw = B.max_pool2d(B.asarray(x), **kw)
    y_ref, sw_ref = R.max_pool2d(*f64(x), **kw)
    assert B.to_numpy(sw).dtype == np.int32
    np.testing.assert_array_equal(B.to_numpy(sw), sw_ref, err_msg="switches")
    np.testing.assert_array_equal(B.to_numpy(y), y_ref.astype(np.float32), err_msg="y")
    dy = randn(rng, *y_ref.shape)
    dx = B.max_pool2d_backward(B.asarray(dy), sw, case[0], **kw)
    assert_close(B.to_numpy(dx), R.max_pool2d_backward(*f64(dy), sw_ref, case[0], **kw), TOL,
                 "dx")


def test_device_max_pool_nan_wins_as_in_pytorch(device_backend):
    B = device_backend
    x, y_want, sw_want = nan_windows()
    y, sw = B.max_pool2d(B.asarray(x), 2)
    np.testing.assert_array_equal(B.to_numpy(y), y_want)
    np.testing.assert_array_equal(B.to_numpy(sw), sw_want)


def test_device_max_pool_ties_and_minus_inf(device_backend, reference_backend):
    """A window of equal values routes its whole gradient to its first pixel; an input of
    -inf with padding still switches to a pixel inside the plane."""
    B, R = device_backend, reference_backend
    x = np.ones((1, 1, 4, 4), np.float32)
    y, sw = B.max_pool2d(B.asarray(x), 2, 2)
    np.testing.assert_array_equal(B.to_numpy(sw)[0, 0], [[0, 2], [8, 10]])
    dx = B.max_pool2d_backward(B.asarray(np.ones((1, 1, 2, 2), np.float32)), sw, x.shape, 2, 2)
    expected = np.zeros((4, 4), np.float32)
    expected[::2, ::2] = 1
    np.testing.assert_array_equal(B.to_numpy(dx)[0, 0], expected)
    x = np.full((1, 2, 5, 5), -np.inf, np.float32)
    for kw in (dict(padding=1), dict(padding=1, dilation=2, ceil_mode=True)):
        _, sw = B.max_pool2d(B.asarray(x), 3, 2, **kw)
        np.testing.assert_array_equal(B.to_numpy(sw), R.max_pool2d(*f64(x), 3, 2, **kw)[1])


@pytest.mark.parametrize("case", AVG_CASES)
def test_device_avg_pool(device_backend, reference_backend, rng, case):
    B, R, kw = device_backend, reference_backend, avg_kw(case)
    x = randn(rng, *case[0])
    y = B.avg_pool2d(B.asarray(x), **kw)
    y_ref = R.avg_pool2d(*f64(x), **kw)
    assert_close(B.to_numpy(y), y_ref, TOL, "y")
    dy = randn(rng, *y_ref.shape)
    dx = B.avg_pool2d_backward(B.asarray(dy), case[0], **kw)
    assert_close(B.to_numpy(dx), R.avg_pool2d_backward(*f64(dy), case[0], **kw), TOL, "dx")


@pytest.mark.parametrize("case", LP_CASES)
def test_device_lp_pool(device_backend, reference_backend, rng, case):
    B, R, kw = device_backend, reference_backend, lp_kw(case)
    p = case[1]
    x = lp_input(rng, case[0], p, np.float32)
    y = B.lp_pool2d(B.asarray(x), p, **kw)
    y_ref = R.lp_pool2d(*f64(x), p, **kw)
    assert_close(B.to_numpy(y), y_ref, TOL, "y")
    dy = randn(rng, *y_ref.shape)
    dx = B.lp_pool2d_backward(B.asarray(dy), B.asarray(x), y, p, **kw)
    dx_ref = R.lp_pool2d_backward(*f64(dy, x), y_ref, p, **kw)
    assert_close(B.to_numpy(dx), dx_ref, TOL, "dx")


def test_device_lp_pool_nan_and_zero_windows(device_backend, reference_backend, rng):
    """NaN exactly where the reference has one (negative x, non-integer p); zero-sum windows
    pass a zero gradient, on the device as in the reference."""
    B, R = device_backend, reference_backend
    x = randn(rng, 2, 2, 6, 7)
    y = B.to_numpy(B.lp_pool2d(B.asarray(x), 1.5, 2, ceil_mode=True))
    np.testing.assert_array_equal(np.isnan(y), np.isnan(R.lp_pool2d(*f64(x), 1.5, 2,
                                                                     ceil_mode=True)))
    x = np.abs(x) + np.float32(0.3)
    x[:, :, 2:4, 2:4] = 0.0
    for p in (2.0, 0.5):
        y = B.lp_pool2d(B.asarray(x), p, 2)
        dy = randn(rng, *y.shape)
        dx = B.to_numpy(B.lp_pool2d_backward(B.asarray(dy), B.asarray(x), y, p, 2))
        dx_ref = R.lp_pool2d_backward(*f64(dy, x), R.lp_pool2d(*f64(x), p, 2), p, 2)
        assert (dx[:, :, 2:4, 2:4] == 0).all() and np.isfinite(dx).all()
        assert_close(dx, dx_ref, TOL, "dx")


# ---- errors ---------------------------------------------------------------------------------
X = np.zeros((1, 1, 6, 6))


@pytest.mark.parametrize("call,error,match", [
    (lambda R: R.lp_pool2d(X, 0, 2), ValueError, "norm_type must be a finite number > 0"),
    (lambda R: R.lp_pool2d(X, -2.0, 2), ValueError, "norm_type"),
    (lambda R: R.lp_pool2d(X, float("inf"), 2), ValueError, "norm_type"),
    (lambda R: R.lp_pool2d(X, float("nan"), 2), ValueError, "norm_type"),
    (lambda R: R.lp_pool2d(X, True, 2), ValueError, "norm_type"),
    (lambda R: R.lp_pool2d_backward(X[:, :, :3, :3], X, X[:, :, :3, :3], "2", 2), ValueError,
     "norm_type"),  # checked before the arrays
    (lambda R: R.max_pool2d(X, 3, 1, 2), ValueError, r"padding \(2, 2\) must be at most half"),
    (lambda R: R.avg_pool2d(X, 2, 2, 1, divisor_override=0), ValueError,
     "divisor_override must be None or a positive int, got 0"),
    (lambda R: R.avg_pool2d(X, 2, divisor_override=-3), ValueError, "divisor_override"),
    (lambda R: R.avg_pool2d(X, 2, divisor_override=2.5), ValueError, "divisor_override"),
    (lambda R: R.avg_pool2d(X, 2, divisor_override=True), ValueError, "divisor_override"),
    (lambda R: R.max_pool2d(np.zeros((1, 1, 2, 6)), 2, 1, 1, dilation=3), ValueError,
     "window 0 along the height has no tap inside the input"),
    (lambda R: R.max_pool2d(X, 2, dilation=0), ValueError, "dilation must be >= 1"),
    (lambda R: R.max_pool2d(X, 7), ValueError, "output height would be 0"),
    (lambda R: R.max_pool2d(X, 3, 1, ceil_mode=True, dilation=4), ValueError,
     "output height would be"),
    (lambda R: R.lp_pool2d(X, 2, 7, 1, ceil_mode=True), ValueError, "output height"),
    (lambda R: R.max_pool2d(X, 2, ceil_mode="yes"), TypeError, "ceil_mode must be True or"),
    (lambda R: R.avg_pool2d(X, 2, count_include_pad=None), TypeError, "count_include_pad"),
    (lambda R: R.lp_pool2d_backward(np.zeros((1, 1, 2, 2)), X, np.zeros((1, 1, 3, 3)), 2, 2),
     ValueError, r"dy must have shape \(1, 1, 3, 3\)"),
    # the layers check their options when built
    (lambda R: LPPool2d(0, 2), ValueError, "LPPool2d: norm_type"),
    (lambda R: AvgPool2d(2, divisor_override=0), ValueError, "divisor_override"),
    (lambda R: MaxPool2d(2, padding=1, dilation=0), ValueError, "dilation"),
])
def test_bad_arguments(reference_backend, call, error, match):
    with pytest.raises(error, match=match):
        call(reference_backend)


# ---- nn layers ------------------------------------------------------------------------------
@pytest.mark.parametrize("layer,call", [
    (MaxPool2d(3, 2, 1, dilation=2, ceil_mode=True),
     lambda R, x: R.max_pool2d(x, 3, 2, 1, dilation=2, ceil_mode=True)[0]),
    (AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
     lambda R, x: R.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False)),
    (AvgPool2d(2, divisor_override=3), lambda R, x: R.avg_pool2d(x, 2, divisor_override=3)),
    (LPPool2d(2, 3, 2, ceil_mode=True), lambda R, x: R.lp_pool2d(x, 2, 3, 2, ceil_mode=True)),
])
def test_layers_match_the_functional_api(reference_backend, rng, layer, call):
    net = Sequential(layer).bind("numpy", rng)
    x = np.abs(randn(rng, 2, 3, 9, 8)) + np.float32(0.5)
    y = net.forward(x)
    assert y.shape[1:] == net.output_shape((3, 9, 8))
    assert_close(y, call(reference_backend, *f64(x)), 1e-6, "y")
    dy = randn(rng, *y.shape)
    dx = layer.backward(dy)
    x64, dy64 = f64(x, dy)
    num = numeric_grad(lambda: call(reference_backend, x64), x64, dy64)
    assert_close(dx, num, 1e-4, "dx")


# ---- PyTorch parity (torch 2.x CPU, float64) ------------------------------------------------
@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="torch is not installed: the PyTorch parity "
                               "checks of the pooling reference need it")


def check_against_torch(torch, y, backward, torch_op, x, dy, tol=1e-12):
    """y and backward(dy) (ours) against torch_op's output and autograd gradient."""
    xt = torch.from_numpy(x.copy()).requires_grad_()
    yt = torch_op(xt)
    yt.backward(torch.from_numpy(dy))
    assert_close(y, yt.detach().numpy(), tol, "y vs torch")
    assert_close(backward(dy), xt.grad.numpy(), tol, "dx vs torch")


@pytest.mark.parametrize("case", MAX_CASES)
def test_max_matches_torch(torch, reference_backend, rng, case):
    R, F, kw = reference_backend, torch.nn.functional, max_kw(case)
    x = distinct(rng, case[0])
    y, sw = R.max_pool2d(x, **kw)
    _, idx = F.max_pool2d(torch.from_numpy(x), **kw, return_indices=True)
    np.testing.assert_array_equal(sw, idx.numpy())
    check_against_torch(torch, y, lambda dy: R.max_pool2d_backward(dy, sw, x.shape, **kw),
                        lambda xt: F.max_pool2d(xt, **kw), x, rng.standard_normal(y.shape))


def test_max_nan_rule_matches_torch(torch):
    x, y_want, sw_want = nan_windows()
    y, idx = torch.nn.functional.max_pool2d(torch.from_numpy(x), 2, return_indices=True)
    np.testing.assert_array_equal(y.numpy(), y_want)
    np.testing.assert_array_equal(idx.numpy(), sw_want)


@pytest.mark.parametrize("case", AVG_CASES)
def test_avg_matches_torch(torch, reference_backend, rng, case):
    R, F, kw = reference_backend, torch.nn.functional, avg_kw(case)
    x = rng.standard_normal(case[0])
    y = R.avg_pool2d(x, **kw)
    check_against_torch(torch, y, lambda dy: R.avg_pool2d_backward(dy, x.shape, **kw),
                        lambda xt: F.avg_pool2d(xt, **kw), x, rng.standard_normal(y.shape))


@pytest.mark.parametrize("case", LP_CASES)
def test_lp_matches_torch(torch, reference_backend, rng, case):
    R, F, kw, p = reference_backend, torch.nn.functional, lp_kw(case), case[1]
    x = lp_input(rng, case[0], p)
    y = R.lp_pool2d(x, p, **kw)
    check_against_torch(torch, y, lambda dy: R.lp_pool2d_backward(dy, x, y, p, **kw),
                        lambda xt: F.lp_pool2d(xt, p, **kw), x, rng.standard_normal(y.shape))
    signed = rng.standard_normal(case[0])  # NaN exactly where torch has NaN (no abs)
    ours = R.lp_pool2d(signed, p, **kw)
    theirs = F.lp_pool2d(torch.from_numpy(signed), p, **kw).numpy()
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
    assert_close(np.nan_to_num(ours), np.nan_to_num(theirs), 1e-12, "y (signed x) vs torch")
