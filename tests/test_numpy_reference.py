"""The NumPy reference checked by central finite differences in float64.

Every analytic backward is compared with d<R, f(x)>/dx estimated numerically, where R is a fixed
random cotangent; the loss is linear in the output, so the difference quotient is exact up to
O(eps^2) and round-off.
"""
import numpy as np
import pytest

from gpucnn.backends.numpy_backend import NumpyBackend
from gpucnn.testing import central_difference, rel_error

B = NumpyBackend()
EPS = 1e-6


def numeric_grad(f, x, cot, eps=EPS):
    """Gradient of sum(cot * f(x)) w.r.t. x by central differences (x modified in place)."""
    loss = lambda: np.sum(cot * f())
    return np.array([central_difference(loss, x, i, eps) for i in range(x.size)]).reshape(
        x.shape)


CONV_CASES = [
    # N, C, H, W, F, k, stride, padding, dilation, groups
    (2, 3, 7, 6, 4, 3, 1, 0, 1, 1),
    (1, 2, 9, 9, 3, 3, 2, 1, 1, 1),          # stride 2, padding, batch 1
    (2, 2, 13, 11, 2, (5, 3), 4, (2, 1), 1, 1),  # stride 4, rectangular kernel
    (2, 4, 9, 8, 4, 3, 1, 2, 2, 2),          # dilation 2, groups 2
    (3, 3, 5, 5, 5, 1, 1, 0, 1, 1),          # 1x1
    (1, 4, 6, 7, 6, 2, (1, 2), 0, 1, 2),     # odd sizes, groups 2
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_gradients(case):
    N, C, H, W, F, k, s, p, d, groups = case
    rng = np.random.default_rng(1)
    kh, kw = (k, k) if isinstance(k, int) else k
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((F, C // groups, kh, kw))
    b = rng.standard_normal(F)
    kw_args = dict(stride=s, padding=p, dilation=d, groups=groups)
    y = B.conv2d(x, w, b, **kw_args)
    cot = rng.standard_normal(y.shape)
    dx, dw, db = B.conv2d_backward(cot, x, w, **kw_args)
    f = lambda: B.conv2d(x, w, b, **kw_args)
    assert rel_error(dx, numeric_grad(f, x, cot)) < 1e-7
    assert rel_error(dw, numeric_grad(f, w, cot)) < 1e-7
    assert rel_error(db, numeric_grad(f, b, cot)) < 1e-7


def test_conv2d_matches_direct_definition():
    """Forward against a literal nested-loop convolution (independent of im2col)."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 8, 7))
    w = rng.standard_normal((6, 2, 3, 2))
    b = rng.standard_normal(6)
    s, p, d, groups = (2, 1), (1, 2), (2, 1), 2
    y = B.conv2d(x, w, b, stride=s, padding=p, dilation=d, groups=groups)
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])))
    ref = np.zeros_like(y)
    for n in range(2):
        for f in range(6):
            gi = f // 3
            for ho in range(y.shape[2]):
                for wo in range(y.shape[3]):
                    acc = b[f]
                    for c in range(2):
                        for i in range(3):
                            for j in range(2):
                                acc += w[f, c, i, j] * xp[n, gi * 2 + c, ho * s[0] + i * d[0],
                                                          wo * s[1] + j * d[1]]
                    ref[n, f, ho, wo] = acc
    assert rel_error(y, ref) < 1e-12


def test_conv2d_fused_relu_and_chunking():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 3, 10, 10)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    y = B.conv2d(x, w, b, padding=1)
    fused = B.conv2d(x, w, b, padding=1, relu=True)
    np.testing.assert_array_equal(fused, np.maximum(y, 0))
    small = NumpyBackend(workspace_bytes=1)  # one image per chunk
    np.testing.assert_allclose(small.conv2d(x, w, b, padding=1), y, rtol=1e-6, atol=1e-6)
    for a, r in zip(small.conv2d_backward(y, x, w, padding=1),
                    B.conv2d_backward(y, x, w, padding=1)):
        assert rel_error(a, r) < 1e-6


POOL_CASES = [
    (2, 3, 6, 6, 2, None, 0),
    (2, 2, 7, 9, 3, 2, 0),       # overlapping 3/2, odd sizes
    (1, 2, 7, 7, 3, 2, 1),       # padding
    (2, 1, 5, 8, (2, 3), (1, 2), (1, 1)),
]


@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool_gradients(case):
    N, C, H, W, k, s, p = case
    rng = np.random.default_rng(4)
    x = rng.permutation(N * C * H * W).reshape(N, C, H, W).astype(np.float64)  # no ties
    x += rng.uniform(-0.1, 0.1, x.shape)
    y, sw = B.max_pool2d(x, k, s, p)
    cot = rng.standard_normal(y.shape)
    dx = B.max_pool2d_backward(cot, sw, x.shape, k, s, p)
    num = numeric_grad(lambda: B.max_pool2d(x, k, s, p)[0], x, cot, eps=1e-4)
    assert rel_error(dx, num) < 1e-8


def test_max_pool_ties_pick_first_in_row_major_order():
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 0] = x[0, 0, 0, 1] = 5.0  # a tie in the first 2x2 window: (0,1) comes first
    y, sw = B.max_pool2d(x, 2)
    assert sw[0, 0, 0, 0] == 0 * 4 + 1
    assert sw[0, 0, 0, 1] == 0 * 4 + 2  # all-zero window: its first element
    assert sw[0, 0, 1, 1] == 2 * 4 + 2
    assert y[0, 0, 0, 0] == 5.0
    dx = B.max_pool2d_backward(np.ones_like(y), sw, x.shape, 2)
    assert dx.sum() == 4 and dx[0, 0, 0, 1] == 1 and dx[0, 0, 1, 0] == 0


def test_max_pool_switches_and_padding_semantics():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 7, 7)).astype(np.float32) - 10  # all negative: -inf pad
    y, sw = B.max_pool2d(x, 3, 2, 1)
    assert sw.dtype == np.int32 and y.shape == (2, 3, 4, 4)
    flat = x.reshape(2, 3, -1)
    np.testing.assert_array_equal(np.take_along_axis(flat, sw.reshape(2, 3, -1), 2),
                                  y.reshape(2, 3, -1))


@pytest.mark.parametrize("case", POOL_CASES)
def test_avg_pool_gradients(case):
    N, C, H, W, k, s, p = case
    rng = np.random.default_rng(6)
    x = rng.standard_normal((N, C, H, W))
    y = B.avg_pool2d(x, k, s, p)
    cot = rng.standard_normal(y.shape)
    dx = B.avg_pool2d_backward(cot, x.shape, k, s, p)
    assert rel_error(dx, numeric_grad(lambda: B.avg_pool2d(x, k, s, p), x, cot)) < 1e-8


def test_relu_and_linear_gradients():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 7))
    w = rng.standard_normal((4, 7))
    b = rng.standard_normal(4)
    for relu in (False, True):
        y = B.linear(x, w, b, relu=relu)
        cot = rng.standard_normal(y.shape)
        g = B.relu_backward(cot, y) if relu else cot
        dx, dw, db = B.linear_backward(g, x, w)
        f = lambda: B.linear(x, w, b, relu=relu)
        assert rel_error(dx, numeric_grad(f, x, cot)) < 1e-7
        assert rel_error(dw, numeric_grad(f, w, cot)) < 1e-7
        assert rel_error(db, numeric_grad(f, b, cot)) < 1e-7
    x4 = rng.standard_normal((2, 3, 4, 5))
    y4 = B.relu(x4)
    cot = rng.standard_normal(y4.shape)
    assert rel_error(B.relu_backward(cot, y4), numeric_grad(lambda: B.relu(x4), x4, cot)) < 1e-8


def test_softmax_cross_entropy_gradient_and_stability():
    rng = np.random.default_rng(8)
    logits = rng.standard_normal((6, 5)) * 3
    labels = rng.integers(0, 5, 6).astype(np.int32)
    loss, probs = B.softmax_cross_entropy(logits, labels)
    d = B.softmax_cross_entropy_backward(probs, labels)
    num = numeric_grad(lambda: B.softmax_cross_entropy(logits, labels)[0], logits,
                       np.ones(()))
    assert rel_error(d, num) < 1e-7
    ref = -np.mean(np.log(np.exp(logits)[np.arange(6), labels] / np.exp(logits).sum(1)))
    assert abs(float(loss) - ref) < 1e-12
    big, _ = B.softmax_cross_entropy(np.array([[1000.0, 0.0], [0.0, -1000.0]]),
                                     np.array([1, 1], dtype=np.int64))
    assert np.isfinite(big) and abs(float(big) - 1000.0) < 1e-9
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
        B.softmax_cross_entropy(logits, np.full(6, 5, dtype=np.int32))


@pytest.mark.parametrize("size", [5, 4, 1])
def test_lrn_gradient(size):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 7, 3, 3))
    args = (size, 1e-1, 0.75, 2.0)  # a large alpha so the cross-channel term matters
    y, scale = B.local_response_norm(x, *args)
    cot = rng.standard_normal(y.shape)
    dx = B.local_response_norm_backward(cot, x, y, scale, *args)
    num = numeric_grad(lambda: B.local_response_norm(x, *args)[0], x, cot)
    assert rel_error(dx, num) < 1e-7


def test_lrn_matches_definition():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((1, 6, 2, 2))
    size, alpha, beta, k = 4, 0.3, 0.75, 2.0
    y, _ = B.local_response_norm(x, size, alpha, beta, k)
    ref = np.empty_like(x)
    for c in range(6):
        lo, hi = max(0, c - size // 2), min(6, c + (size - 1) // 2 + 1)
        ref[:, c] = x[:, c] / (k + alpha / size * (x[:, lo:hi] ** 2).sum(1)) ** beta
    assert rel_error(y, ref) < 1e-12


def test_dropout_is_seeded_and_scaled():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((64, 100)).astype(np.float32)
    y1, m1 = B.dropout(x, 0.5, seed=3)
    y2, m2 = B.dropout(x, 0.5, seed=3)
    _, m3 = B.dropout(x, 0.5, seed=4)
    np.testing.assert_array_equal(m1, m2)
    assert (m1 != m3).any()
    assert set(np.unique(m1)) == {0.0, 2.0}
    assert abs((m1 > 0).mean() - 0.5) < 0.03
    np.testing.assert_array_equal(y1, x * m1)
    np.testing.assert_array_equal(B.dropout_backward(y1, m1), y1 * m1)
    y0, m0 = B.dropout(x, 0.0, seed=1)
    np.testing.assert_array_equal(y0, x)


def test_sgd_and_adam_match_pytorch_formulas():
    rng = np.random.default_rng(12)
    p0 = rng.standard_normal(10)
    grads = [rng.standard_normal(10) for _ in range(3)]
    for nesterov in (False, True):
        p, v = p0.copy(), np.zeros(10)
        ref_p, ref_buf = p0.copy(), None
        for g in grads:
            B.sgd_update(p, g, v, lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=nesterov)
            d = g + 0.01 * ref_p
            ref_buf = d if ref_buf is None else 0.9 * ref_buf + d
            ref_p = ref_p - 0.1 * (d + 0.9 * ref_buf if nesterov else ref_buf)
        assert rel_error(p, ref_p) < 1e-14
    p, m, v = p0.copy(), np.zeros(10), np.zeros(10)
    rm, rv, rp = np.zeros(10), np.zeros(10), p0.copy()
    for t, g in enumerate(grads, 1):
        B.adam_update(p, g, m, v, lr=1e-2, step=t)
        rm = 0.9 * rm + 0.1 * g
        rv = 0.999 * rv + 0.001 * g * g
        rp = rp - 1e-2 * (rm / (1 - 0.9 ** t)) / (np.sqrt(rv / (1 - 0.999 ** t)) + 1e-8)
    assert rel_error(p, rp) < 1e-12


# ---- fast paths against the general ones (same backend, same inputs) ------------------------
from gpucnn.backends.base import conv_geometry, pool_geometry  # noqa: E402

FAST_CONV_CASES = [
    # N, C, H, W, F, k, padding: stride 1, dilation 1, one group -> the wide-column path
    (32, 1, 28, 28, 6, 5, 2),    # LeNet conv1 (smaller batch: same GEMM chunking)
    (32, 6, 14, 14, 16, 5, 0),   # LeNet conv2
    (3, 4, 9, 7, 5, 3, 1),       # odd sizes, odd batch
    (5, 3, 6, 8, 2, (3, 1), (0, 2)),
    (1, 2, 5, 5, 3, 5, 0),       # 1x1 output
    (7, 2, 4, 4, 3, 1, 0),       # 1x1 kernel, prime batch
    (64, 8, 10, 10, 8, 3, 1),    # K + 1 >= 64: dW on 32-image blocks, GEMMs on 8-image ones
    (6, 32, 12, 12, 64, 3, 1),   # one image's GEMM past the small-matrix regime: long GEMMs
    (5, 24, 11, 11, 96, 3, 0),   # the same with a prime batch (chunks of one image)
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", FAST_CONV_CASES)
def test_fast_conv_matches_general_path(case, dtype):
    N, C, H, W, F, k, p = case
    rng = np.random.default_rng(20)
    kh, kw = (k, k) if isinstance(k, int) else k
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((F, C, kh, kw)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    g = conv_geometry(x.shape, w.shape, 1, p)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for threads in (1, 2):
        fast = NumpyBackend(threads=threads)
        for relu in (False, True):
            y = fast.conv2d(x, w, b, padding=p, relu=relu)
            assert rel_error(y, B._conv2d_generic(x, w, b, g, relu)) < tol
        dy = rng.standard_normal(y.shape).astype(dtype)
        ref = B._conv2d_backward_generic(dy, x, w, g)
        got = fast.conv2d_backward(dy, x, w, padding=p)  # uses the cached columns
        for a, r in zip(got, ref):
            assert a.dtype == dtype and a.flags.c_contiguous
            assert rel_error(a, r) < tol
        again = fast.conv2d_backward(dy, x, w, padding=p)  # cache consumed: recomputed
        for a, r in zip(again, ref):
            assert rel_error(a, r) < tol
        dx, dw, db = fast.conv2d_backward(dy, x, w, padding=p, need_dx=False)
        assert dx is None and rel_error(dw, ref[1]) < tol and rel_error(db, ref[2]) < tol
        dx, dw, db = fast.conv2d_backward(dy, x, w, padding=p, need_dw=False)
        assert dw is None and db is None and rel_error(dx, ref[0]) < tol
    y = fast.conv2d(x, w, None, padding=p)
    assert rel_error(y, B._conv2d_generic(x, w, None, g, False)) < tol


def test_fast_conv_column_cache_is_safe():
    """The forward's columns are reused by backward only for the very same, unchanged x."""
    rng = np.random.default_rng(21)
    fast = NumpyBackend(threads=1)
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((4, 5, 8, 8)).astype(np.float32)
    g = conv_geometry(x.shape, w.shape, 1, 1)
    fast.conv2d(x, w, None, padding=1)
    x += 1.0  # modified in place after the forward
    ref = B._conv2d_backward_generic(dy, x, w, g)
    assert rel_error(fast.conv2d_backward(dy, x, w, padding=1)[1], ref[1]) < 1e-5
    fast.conv2d(x, w, None, padding=1)
    x2 = x.copy()  # a different array with the same contents: recomputed, same answer
    assert rel_error(fast.conv2d_backward(dy, x2, w, padding=1)[1], ref[1]) < 1e-5
    fast.conv2d(x, w, None, padding=1)
    xv = x.reshape(4, 3, 64)[:, :, :].reshape(4, 3, 8, 8)  # a view: different identity
    assert rel_error(fast.conv2d_backward(dy, xv, w, padding=1)[1], ref[1]) < 1e-5
    for _ in range(40):  # many forwards without backward: the cache stays bounded
        fast.conv2d(rng.standard_normal((4, 3, 8, 8)).astype(np.float32), w, None, padding=1)
    assert len(fast._cols_cache) <= 16


@pytest.mark.parametrize("shape", [(9, 2, 7, 7, 3), (64, 8, 10, 10, 8)])
def test_fast_conv_workspace_slices(shape):
    N, C, H, W, F = shape
    rng = np.random.default_rng(22)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((F, C, 3, 3)).astype(np.float32)
    b = rng.standard_normal(F).astype(np.float32)
    g = conv_geometry(x.shape, w.shape, 1, 1)
    for ws in (1, 200_000):  # one GEMM block per slice; a few blocks per slice
        small = NumpyBackend(workspace_bytes=ws, threads=2)
        y = small.conv2d(x, w, b, padding=1, relu=True)
        assert rel_error(y, B._conv2d_generic(x, w, b, g, True)) < 1e-5
        dy = rng.standard_normal(y.shape).astype(np.float32)
        for a, r in zip(small.conv2d_backward(dy, x, w, padding=1),
                        B._conv2d_backward_generic(dy, x, w, g)):
            assert rel_error(a, r) < 1e-5


POOL_FAST_CASES = [
    (128, 6, 28, 28, 2, None),   # LeNet pool1
    (3, 2, 7, 9, 3, 2),          # overlapping windows, odd sizes
    (2, 3, 9, 8, (2, 3), (3, 2)),
    (2, 2, 5, 5, 1, 1),
    (2, 2, 9, 9, 2, 3),          # gaps between windows
    (1, 2, 7, 300, 3, 3),        # wide planes: offsets h * W + w beyond 8 bits
    (1, 1, 7, 200, 3, 2),        # W < 256 but i * W > 255
    (1, 1, 4, 600, (1, 2), 2),   # kw == 2 with W > 255
    (1, 1, 5, 300, (3, 1), 1),   # kw == 1
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", POOL_FAST_CASES)
def test_fast_max_pool_matches_general_path_with_ties(case, threads):
    N, C, H, W, k, s = case
    rng = np.random.default_rng(23)
    fast = NumpyBackend(threads=threads)
    # Few distinct values and flat zero regions: ties everywhere (Fashion-MNIST backgrounds).
    x = rng.integers(-2, 3, (N, C, H, W)).astype(np.float32)
    x[:, :, : H // 2] = 0.0
    g = pool_geometry(x.shape, k, s, 0)
    y, sw = fast.max_pool2d(x, k, s)
    y_ref, sw_ref = B._max_pool2d_generic(x, g)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(sw, sw_ref)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = fast.max_pool2d_backward(dy, sw, x.shape, k, s)
    plane = H * W
    ref = np.bincount((np.arange(N * C)[:, None] * plane + sw.reshape(N * C, -1)).ravel(),
                      weights=dy.ravel().astype(np.float64), minlength=N * C * plane)
    np.testing.assert_allclose(dx.ravel(), ref, rtol=1e-6, atol=1e-6)
    assert dx.dtype == np.float32


def test_fast_max_pool_nan_and_inf_follow_the_strict_fold():
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 0, 1] = np.nan          # first window: NaN second -> the fold keeps x[0, 0]
    x[0, 0, 0, 2] = np.nan          # second window: NaN first -> kept
    x[0, 0, 0, 3] = 5.0
    x[0, 0, 2:, 2:] = -np.inf
    x[0, 0, 3, 3] = np.inf
    y, sw = B.max_pool2d(x, 2)
    y_ref, sw_ref = B._max_pool2d_generic(x, pool_geometry(x.shape, 2, None, 0))
    np.testing.assert_array_equal(sw, sw_ref)
    np.testing.assert_array_equal(y, y_ref)  # NaN positions compare equal here


def test_relu_backward_is_an_exact_select():
    rng = np.random.default_rng(24)
    for dtype in (np.float32, np.float64):
        y = np.maximum(rng.standard_normal((4, 5, 80, 81)), 0).astype(dtype)  # > 1 thread
        y[0, 0, 0, :4] = [np.nan, -0.0, np.inf, 1e-40]
        dy = rng.standard_normal(y.shape).astype(dtype)
        dy[0, 0, 1, :2] = [np.nan, np.inf]
        y[0, 0, 1, :2] = 0.0
        for threads in (1, 2):
            got = NumpyBackend(threads=threads).relu_backward(dy, y)
            ref = np.where(y > 0, dy, 0).astype(dtype)
            assert got.dtype == dtype
            np.testing.assert_array_equal(got, ref)


def test_linear_split_over_threads():
    rng = np.random.default_rng(25)
    x = rng.standard_normal((96, 300)).astype(np.float32)
    w = rng.standard_normal((200, 300)).astype(np.float32)
    b = rng.standard_normal(200).astype(np.float32)
    one, two = NumpyBackend(threads=1), NumpyBackend(threads=2)
    y1, y2 = one.linear(x, w, b, relu=True), two.linear(x, w, b, relu=True)
    assert rel_error(y2, y1) < 1e-6
    for a, r in zip(two.linear_backward(y2, x, w), one.linear_backward(y1, x, w)):
        assert rel_error(a, r) < 1e-6


def test_backend_shared_by_threads_and_worker_errors():
    """Two caller threads on one backend (one runs inline while the other holds the workers)
    and an exception raised inside a worker reaches the caller."""
    import threading
    rng = np.random.default_rng(26)
    two = NumpyBackend(threads=2)
    x = rng.standard_normal((64, 3, 12, 12)).astype(np.float32)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    ref = B.conv2d(x, w, None, padding=1, relu=True)
    errors = []

    def loop():
        try:
            for _ in range(20):
                np.testing.assert_allclose(two.conv2d(x, w, None, padding=1, relu=True), ref,
                                           rtol=1e-5, atol=1e-5)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=loop) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors

    def boom(a, b):
        if a > 0:
            raise RuntimeError("worker failed")
        return a

    with pytest.raises(RuntimeError, match="worker failed"):
        two._run(boom, [(0, 1), (1, 2)])
    assert two._run(lambda a, b: b - a, [(0, 3), (3, 4)]) == [3, 1]  # still usable


def test_recycled_results_are_never_shared():
    """Large results come from a pool recycled by reference count: a result (or any view of
    it) that is still referenced is never handed out again."""
    rng = np.random.default_rng(27)
    be = NumpyBackend(threads=1)
    y = np.maximum(rng.standard_normal((4, 8, 64, 64)), 0).astype(np.float32)  # 512 KiB
    dy = rng.standard_normal(y.shape).astype(np.float32)
    ref = np.where(y > 0, dy, 0)
    a = be.relu_backward(dy, y)
    b = be.relu_backward(dy, y)
    assert a is not b and not np.shares_memory(a, b)
    view = a[1:3]
    addr = a.__array_interface__["data"][0]
    del a
    c = be.relu_backward(2 * dy, y)  # `view` still holds the first block
    assert not np.shares_memory(c, view) and not np.shares_memory(c, b)
    np.testing.assert_array_equal(view, ref[1:3])
    mv = memoryview(c)
    del c, view
    d = be.relu_backward(3 * dy, y)
    assert not np.shares_memory(d, np.asarray(mv)) and not np.shares_memory(d, b)
    del d, mv
    e = be.relu_backward(dy, y)  # now something is free again: reused, and correct
    np.testing.assert_array_equal(e, ref)
    np.testing.assert_array_equal(b, ref)
    assert addr is not None
