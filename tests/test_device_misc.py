"""Equivalence tests of the device backend's non-GEMM kernels (pool.cu, activation.cu, loss.cu,
lrn.cu, optim.cu via device_misc.py) against the NumPy reference backend run in float64.

Every test runs in all three emu thread orders (the ``device_backend`` fixture), with outputs
poisoned before the kernels write them. Shapes are kept small: the emulator runs every CUDA
thread as a fiber.
"""
import numpy as np
import pytest

from gpucnn.backends.base import dropout_hash, dropout_threshold
from gpucnn.testing import assert_close, randn

TOL = 1e-5


def dev(B, a):
    """A device copy of the NumPy array ``a`` (dtype kept)."""
    return B.asarray(a, dtype=a.dtype)


def host(B, a):
    return B.to_numpy(a)


def f64(a):
    return np.asarray(a, dtype=np.float64)


# ---- max pooling ---------------------------------------------------------------------------
# (x shape, kernel_size, stride, padding): AlexNet's overlapping 3/2, plain 2/2, padding with odd
# sizes and batch 1, rectangular windows, and stride > kernel (pixels in no window).
POOL_CASES = [
    ((2, 3, 7, 7), 3, 2, 0),
    ((2, 2, 8, 6), 2, 2, 0),
    ((1, 2, 9, 7), 3, 2, 1),
    ((1, 3, 5, 6), (3, 2), (1, 2), (1, 1)),
    ((2, 2, 7, 5), 2, 3, 0),
]


def pool_input(rng, shape, kind):
    """Random input; 'rounded' has many tied maxima, 'plateau' has constant regions too."""
    x = randn(rng, *shape)
    if kind == "rounded":
        x = np.round(x)  # values in a handful of integers: ties in most windows
    elif kind == "plateau":
        x[:, :, 1:5, 1:4] = 0.25  # a constant block: every window over it is all ties
        x[:, 0] = -1.5            # a whole constant plane
    return np.ascontiguousarray(x, dtype=np.float32)


@pytest.mark.parametrize("kind", ["randn", "rounded", "plateau"])
@pytest.mark.parametrize("shape,k,s,p", POOL_CASES)
def test_max_pool2d(device_backend, numpy_backend, rng, shape, k, s, p, kind):
    B, R = device_backend, numpy_backend
    x = pool_input(rng, shape, kind)
    y, sw = B.max_pool2d(dev(B, x), k, s, p)
    y_ref, sw_ref = R.max_pool2d(f64(x), k, s, p)
    assert host(B, sw).dtype == np.int32
    np.testing.assert_array_equal(host(B, sw), sw_ref, err_msg="switches")
    np.testing.assert_array_equal(host(B, y), y_ref.astype(np.float32), err_msg="y")

    dy = randn(rng, *y_ref.shape)
    dx = B.max_pool2d_backward(dev(B, dy), sw, shape, k, s, p)
    dx_ref = R.max_pool2d_backward(f64(dy), sw_ref, shape, k, s, p)
    assert_close(host(B, dx), dx_ref, TOL, "dx")


def test_max_pool2d_switches_pick_first_maximum(device_backend):
    """A window of equal values routes its whole gradient to its first (top-left) pixel."""
    B = device_backend
    x = np.ones((1, 1, 4, 4), np.float32)
    y, sw = B.max_pool2d(dev(B, x), 2, 2)
    np.testing.assert_array_equal(host(B, sw)[0, 0], [[0, 2], [8, 10]])
    dx = B.max_pool2d_backward(dev(B, np.ones((1, 1, 2, 2), np.float32)), sw, x.shape, 2, 2)
    expected = np.zeros((4, 4), np.float32)
    expected[::2, ::2] = 1
    np.testing.assert_array_equal(host(B, dx)[0, 0], expected)


# ---- average pooling -----------------------------------------------------------------------
@pytest.mark.parametrize("shape,k,s,p", [
    ((2, 3, 7, 7), 3, 2, 1),
    ((1, 2, 6, 8), 2, 2, 0),
    ((2, 2, 5, 7), 3, 1, 1),
    ((1, 3, 9, 6), (3, 2), (2, 1), (1, 1)),
])
def test_avg_pool2d(device_backend, numpy_backend, rng, shape, k, s, p):
    B, R = device_backend, numpy_backend
    x = randn(rng, *shape)
    y = B.avg_pool2d(dev(B, x), k, s, p)
    y_ref = R.avg_pool2d(f64(x), k, s, p)
    assert_close(host(B, y), y_ref, TOL, "y")

    dy = randn(rng, *y_ref.shape)
    dx = B.avg_pool2d_backward(dev(B, dy), shape, k, s, p)
    dx_ref = R.avg_pool2d_backward(f64(dy), shape, k, s, p)
    assert_close(host(B, dx), dx_ref, TOL, "dx")


# ---- ReLU ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 5, 7), (1, 1), (2, 3, 4, 5)])
def test_relu(device_backend, numpy_backend, rng, shape):
    B, R = device_backend, numpy_backend
    x = randn(rng, *shape)
    x.flat[::7] = 0.0  # exact zeros: the gradient there is 0
    y = B.relu(dev(B, x))
    y_ref = R.relu(f64(x))
    np.testing.assert_array_equal(host(B, y), y_ref.astype(np.float32))

    dy = randn(rng, *shape)
    dx = B.relu_backward(dev(B, dy), y)
    dx_ref = R.relu_backward(f64(dy), y_ref)
    np.testing.assert_array_equal(host(B, dx), dx_ref.astype(np.float32))


# ---- dropout -------------------------------------------------------------------------------
@pytest.mark.parametrize("p,seed", [(0.0, 7), (0.5, 12345), (0.3, 2**32 - 1), (0.9, 0)])
def test_dropout_mask_bit_identical(device_backend, numpy_backend, rng, p, seed):
    B, R = device_backend, numpy_backend
    shape = (3, 5, 7, 11)
    x = randn(rng, *shape)
    y, mask = B.dropout(dev(B, x), p, seed)
    # Bit for bit against the reference on the same float32 input.
    y_ref, mask_ref = R.dropout(x.copy(), p, seed)
    np.testing.assert_array_equal(host(B, mask), mask_ref, err_msg="mask")
    np.testing.assert_array_equal(host(B, y), y_ref, err_msg="y")
    # And against the hash's definition in base.py.
    h = dropout_hash(seed, np.arange(x.size, dtype=np.uint32))
    keep = (h >> np.uint32(8)) >= dropout_threshold(p)
    np.testing.assert_array_equal(host(B, mask).ravel() != 0, keep)
    if p == 0.0:
        assert keep.all()

    dy = randn(rng, *shape)
    dx = B.dropout_backward(dev(B, dy), mask)
    dx_ref = R.dropout_backward(f64(dy), f64(mask_ref))
    assert_close(host(B, dx), dx_ref, TOL, "dx")


# ---- softmax cross-entropy -----------------------------------------------------------------
@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("N,K,scale,offset", [
    (5, 10, 3.0, 0.0),
    (11, 300, 1.0, 0.0),      # more rows than emu blocks, more classes than threads
    (4, 7, 1e3, 1e4),         # large logits: exp would overflow without the max shift
    (1, 3, 50.0, -1e4),       # batch 1, large negative logits
])
def test_softmax_cross_entropy(device_backend, numpy_backend, rng, N, K, scale, offset,
                               label_dtype):
    B, R = device_backend, numpy_backend
    logits = (randn(rng, N, K, dtype=np.float64) * scale + offset).astype(np.float32)
    labels = rng.integers(0, K, size=N)
    # Not the row's argmax: a loss near 0 (log of 1 + tiny) has no float32 relative accuracy.
    top = logits.argmax(axis=1)
    labels = np.where(labels == top, (labels + 1) % K, labels).astype(label_dtype)
    loss, probs = B.softmax_cross_entropy(dev(B, logits), dev(B, labels))
    loss_ref, probs_ref = R.softmax_cross_entropy(f64(logits), labels)
    assert isinstance(loss, B.xp.ndarray) and loss.shape == ()
    assert np.isfinite(host(B, loss))
    assert_close(host(B, loss), loss_ref, TOL, "loss")
    assert_close(host(B, probs), probs_ref, TOL, "probs")

    dlogits = B.softmax_cross_entropy_backward(probs, dev(B, labels))
    dlogits_ref = R.softmax_cross_entropy_backward(probs_ref, labels)
    assert_close(host(B, dlogits), dlogits_ref, TOL, "dlogits")


def test_xent_block_size_matches_the_kernel():
    """The launch's block size is the size of loss.cu's shared-memory reduction tree."""
    import re

    from gpucnn.backends.device import kernel_dir
    from gpucnn.backends.device_misc import XENT_THREADS
    text = (kernel_dir() / "loss.cu").read_text()
    assert int(re.search(r"#define XENT_THREADS (\d+)", text).group(1)) == XENT_THREADS
    assert XENT_THREADS & (XENT_THREADS - 1) == 0, "the tree reduction needs a power of two"


def test_softmax_cross_entropy_is_deterministic(device_backend, rng):
    B = device_backend
    logits = dev(B, randn(rng, 9, 130))
    labels = dev(B, rng.integers(0, 130, size=9).astype(np.int32))
    first = host(B, B.softmax_cross_entropy(logits, labels)[0])
    second = host(B, B.softmax_cross_entropy(logits, labels)[0])
    assert first.tobytes() == second.tobytes()


def test_softmax_cross_entropy_bad_label_is_nan(device_backend, rng):
    """A label outside [0, K) cannot raise on the device: its row poisons loss and gradient."""
    B = device_backend
    logits = dev(B, randn(rng, 3, 4))
    labels = dev(B, np.array([1, 4, 0], np.int32))
    loss, probs = B.softmax_cross_entropy(logits, labels)
    assert np.isnan(host(B, loss))
    dlogits = host(B, B.softmax_cross_entropy_backward(probs, labels))
    assert np.isnan(dlogits[1]).all() and np.isfinite(dlogits[[0, 2]]).all()


# ---- local response normalisation ----------------------------------------------------------
LRN_CASES = [
    ((2, 7, 3, 4), 5, 1e-4, 0.75, 2.0),  # AlexNet's constants
    ((2, 7, 3, 4), 5, 0.5, 0.75, 1.0),   # strong enough that the cross-channel term matters
    ((1, 6, 2, 3), 4, 0.3, 0.6, 1.5),    # even size: a lopsided window
    ((2, 3, 2, 2), 7, 0.2, 0.75, 1.0),   # window wider than the channel count
    ((1, 5, 3, 3), 1, 0.1, 0.5, 1.0),
]


@pytest.mark.parametrize("shape,size,alpha,beta,k", LRN_CASES)
def test_local_response_norm(device_backend, numpy_backend, rng, shape, size, alpha, beta, k):
    B, R = device_backend, numpy_backend
    x = randn(rng, *shape)
    y, scale = B.local_response_norm(dev(B, x), size, alpha, beta, k)
    y_ref, scale_ref = R.local_response_norm(f64(x), size, alpha, beta, k)
    assert_close(host(B, scale), scale_ref, TOL, "scale")
    assert_close(host(B, y), y_ref, TOL, "y")

    dy = randn(rng, *shape)
    dx = B.local_response_norm_backward(dev(B, dy), dev(B, x), y, scale, size, alpha, beta, k)
    dx_ref = R.local_response_norm_backward(f64(dy), f64(x), y_ref, scale_ref, size, alpha,
                                            beta, k)
    assert_close(host(B, dx), dx_ref, TOL, "dx")


@pytest.mark.parametrize("size", [3, 4])
def test_local_response_norm_backward_is_the_gradient(device_backend, numpy_backend, rng,
                                                      size):
    """The kernel's dx against central differences of the float64 reference forward."""
    B, R = device_backend, numpy_backend
    alpha, beta, k = 0.4, 0.75, 1.0
    x = randn(rng, 1, 5, 2, 2)
    dy = randn(rng, *x.shape)
    y, scale = B.local_response_norm(dev(B, x), size, alpha, beta, k)
    dx = B.local_response_norm_backward(dev(B, dy), dev(B, x), y, scale, size, alpha, beta, k)

    x64, eps = f64(x), 1e-6
    numeric = np.empty_like(x64)
    for i in range(x64.size):
        plus, minus = x64.copy(), x64.copy()
        plus.flat[i] += eps
        minus.flat[i] -= eps
        f_plus = (R.local_response_norm(plus, size, alpha, beta, k)[0] * dy).sum()
        f_minus = (R.local_response_norm(minus, size, alpha, beta, k)[0] * dy).sum()
        numeric.flat[i] = (f_plus - f_minus) / (2 * eps)
    assert_close(host(B, dx), numeric, 1e-5, "dx vs finite differences")


# ---- optimiser updates ---------------------------------------------------------------------
@pytest.mark.parametrize("momentum,weight_decay,nesterov", [
    (0.0, 0.0, False),     # plain SGD
    (0.9, 0.0, False),     # momentum
    (0.9, 0.0, True),      # Nesterov
    (0.9, 5e-4, False),    # AlexNet: momentum + weight decay
    (0.5, 1e-2, True),
])
def test_sgd_update(device_backend, numpy_backend, rng, momentum, weight_decay, nesterov):
    B, R = device_backend, numpy_backend
    shape, lr = (7, 13), 0.05
    p0 = randn(rng, *shape)
    v0 = 0.1 * randn(rng, *shape)  # mid-training velocity (plain SGD must leave it alone)
    param, velocity = dev(B, p0), dev(B, v0)
    param_ref, velocity_ref = f64(p0), f64(v0)
    for step in range(3):
        g = randn(rng, *shape)
        B.sgd_update(param, dev(B, g), velocity, lr, momentum, weight_decay, nesterov)
        R.sgd_update(param_ref, f64(g), velocity_ref, lr, momentum, weight_decay, nesterov)
        assert_close(host(B, param), param_ref, TOL, f"param after step {step + 1}")
        assert_close(host(B, velocity), velocity_ref, TOL, f"velocity after step {step + 1}")


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_adam_update(device_backend, numpy_backend, rng, weight_decay):
    B, R = device_backend, numpy_backend
    shape, lr, beta1, beta2, eps = (5, 11), 1e-2, 0.9, 0.999, 1e-8
    p0 = randn(rng, *shape)
    m0 = 0.1 * randn(rng, *shape)
    v0 = 0.01 * randn(rng, *shape) ** 2  # a running second moment: positive
    param, m, v = dev(B, p0), dev(B, m0), dev(B, v0)
    param_ref, m_ref, v_ref = f64(p0), f64(m0), f64(v0)
    for step in range(1, 5):
        g = randn(rng, *shape)
        B.adam_update(param, dev(B, g), m, v, lr, beta1, beta2, eps, weight_decay, step)
        R.adam_update(param_ref, f64(g), m_ref, v_ref, lr, beta1, beta2, eps, weight_decay,
                      step)
        assert_close(host(B, param), param_ref, TOL, f"param after step {step}")
        assert_close(host(B, m), m_ref, TOL, f"m after step {step}")
        assert_close(host(B, v), v_ref, TOL, f"v after step {step}")
