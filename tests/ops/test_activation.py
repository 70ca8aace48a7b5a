"""ReLU and dropout (gpucnn/ops/activation.py, kernels/activation.cu): the reference by its
definition and finite differences; the tuned CPU path and the kernels (emu, three thread
orders) against the reference."""
import numpy as np
import pytest

from gpucnn.ops import activation
from gpucnn.testing import assert_close, f64, numeric_grad, randn, rel_error

TOL = 1e-5


def test_relu_reference_gradient(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    y = activation.relu_reference(x)
    assert (y.ravel() == np.array([v if v > 0 else 0.0 for v in x.ravel()])).all()
    cot = rng.standard_normal(y.shape)
    dx = activation.relu_backward_reference(cot, y)
    assert rel_error(dx, numeric_grad(lambda: activation.relu_reference(x), x, cot)) < 1e-8


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_backward_cpu_is_the_reference_select(rng, threads, dtype):
    """The branch-free bitwise select equals np.where exactly, NaN/inf/-0.0/subnormals too."""
    from gpucnn.backends.numpy_backend import NumpyBackend
    y = np.maximum(rng.standard_normal((4, 5, 80, 81)), 0).astype(dtype)  # > 1 thread
    y[0, 0, 0, :4] = [np.nan, -0.0, np.inf, 1e-40]
    dy = rng.standard_normal(y.shape).astype(dtype)
    dy[0, 0, 1, :2] = [np.nan, np.inf]
    y[0, 0, 1, :2] = 0.0
    got = NumpyBackend(threads=threads).relu_backward(dy, y)
    ref = activation.relu_backward_reference(dy, y)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("shape", [(3, 5, 7), (1, 1), (2, 3, 4, 5)])
def test_relu_device(device_backend, reference_backend, rng, shape):
    B, R = device_backend, reference_backend
    x = randn(rng, *shape)
    x.flat[::7] = 0.0  # exact zeros: the gradient there is 0
    y = B.relu(B.asarray(x))
    y_ref = R.relu(f64(x)[0])
    np.testing.assert_array_equal(B.to_numpy(y), y_ref.astype(np.float32))
    dy = randn(rng, *shape)
    dx = B.relu_backward(B.asarray(dy), y)
    np.testing.assert_array_equal(B.to_numpy(dx),
                                  R.relu_backward(f64(dy)[0], y_ref).astype(np.float32))


def test_dropout_reference_is_seeded_and_scaled(rng):
    x = rng.standard_normal((64, 100)).astype(np.float32)
    y1, m1 = activation.dropout_reference(x, 0.5, 3)
    y2, m2 = activation.dropout_reference(x, 0.5, 3)
    _, m3 = activation.dropout_reference(x, 0.5, 4)
    np.testing.assert_array_equal(m1, m2)
    assert (m1 != m3).any()
    assert set(np.unique(m1)) == {0.0, 2.0}
    assert abs((m1 > 0).mean() - 0.5) < 0.03
    np.testing.assert_array_equal(y1, x * m1)
    np.testing.assert_array_equal(activation.dropout_backward_reference(y1, m1), y1 * m1)
    y0, _ = activation.dropout_reference(x, 0.0, 1)
    np.testing.assert_array_equal(y0, x)


def test_dropout_hash_matches_its_definition():
    """The lowbias32 finaliser, step by step in Python integers, for a few (seed, index)."""
    def hash_(seed, i):
        m = 0xFFFFFFFF
        h = (i * 0x9E3779B1 + seed * 0x85EBCA77) & m
        h ^= h >> 16
        h = (h * 0x7FEB352D) & m
        h ^= h >> 15
        h = (h * 0x846CA68B) & m
        return h ^ (h >> 16)
    idx = np.array([0, 1, 2, 12345, 2**32 - 1], dtype=np.uint32)
    for seed in (0, 7, 2**32 - 1):
        got = activation.dropout_hash(seed, idx)
        assert [int(v) for v in got] == [hash_(seed, int(i)) for i in idx]


@pytest.mark.parametrize("p,seed", [(0.0, 7), (0.5, 12345), (0.3, 2**32 - 1), (0.9, 0)])
def test_dropout_device_mask_bit_identical(device_backend, reference_backend, rng, p, seed):
    B, R = device_backend, reference_backend
    shape = (3, 5, 7, 11)
    x = randn(rng, *shape)
    y, mask = B.dropout(B.asarray(x), p, seed)
    y_ref, mask_ref = R.dropout(x.copy(), p, seed)  # the same float32 input: bit for bit
    np.testing.assert_array_equal(B.to_numpy(mask), mask_ref, err_msg="mask")
    np.testing.assert_array_equal(B.to_numpy(y), y_ref, err_msg="y")
    h = activation.dropout_hash(seed, np.arange(x.size, dtype=np.uint32))
    keep = (h >> np.uint32(8)) >= activation.dropout_threshold(p)
    np.testing.assert_array_equal(B.to_numpy(mask).ravel() != 0, keep)
    if p == 0.0:
        assert keep.all()
    dy = randn(rng, *shape)
    dx = B.dropout_backward(B.asarray(dy), mask)
    assert_close(B.to_numpy(dx), R.dropout_backward(*f64(dy, mask_ref)), TOL, "dx")


def test_numpy_backend_dropout_is_the_reference(numpy_backend, rng):
    x = randn(rng, 4, 33)
    for a, b in zip(numpy_backend.dropout(x, 0.25, 99), activation.dropout_reference(x, 0.25, 99)):
        np.testing.assert_array_equal(a, b)
