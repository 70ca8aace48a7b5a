"""Fully connected layer (gpucnn/ops/linear.py; SGEMM + bias_grad_rows on the device): the
reference by finite differences; the tuned CPU path (one or two threads) and the device
(emu, three orders) against it."""
import numpy as np
import pytest

from gpucnn.backends.numpy_backend import NumpyBackend
from gpucnn.ops import activation, linear
from gpucnn.testing import assert_close, f64, numeric_grad, randn, rel_error


@pytest.mark.parametrize("relu", [False, True])
def test_reference_gradients(rng, relu):
    x = rng.standard_normal((5, 7))
    w = rng.standard_normal((4, 7))
    b = rng.standard_normal(4)
    y = linear.linear_reference(x, w, b, relu)
    loops = np.array([[sum(x[n, i] * w[o, i] for i in range(7)) + b[o] for o in range(4)]
                      for n in range(5)])
    assert rel_error(y, np.maximum(loops, 0) if relu else loops) < 1e-14
    cot = rng.standard_normal(y.shape)
    g = activation.relu_backward_reference(cot, y) if relu else cot
    dx, dw, db = linear.linear_backward_reference(g, x, w)
    f = lambda: linear.linear_reference(x, w, b, relu)  # noqa: E731
    assert rel_error(dx, numeric_grad(f, x, cot)) < 1e-7
    assert rel_error(dw, numeric_grad(f, w, cot)) < 1e-7
    assert rel_error(db, numeric_grad(f, b, cot)) < 1e-7


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n,fin,fout", [(96, 300, 200), (128, 400, 120), (3, 5, 2)])
def test_cpu_matches_reference(rng, threads, n, fin, fout):
    """(96, 300, 200) x 2 threads takes the batch split (n * w.size above the threshold)."""
    x, w, b = randn(rng, n, fin), randn(rng, fout, fin), randn(rng, fout)
    B = NumpyBackend(threads=threads)
    y = B.linear(x, w, b, relu=True)
    y_ref = linear.linear_reference(*f64(x, w, b), True)
    assert_close(y, y_ref, 1e-5, "y")
    dy = randn(rng, n, fout)
    for got, ref, nm in zip(B.linear_backward(dy, x, w),
                            linear.linear_backward_reference(*f64(dy, x, w)), "dx dw db".split()):
        assert_close(got, ref, 1e-5, nm)


@pytest.mark.parametrize("n,fin,fout", [(1, 1, 1), (5, 33, 17), (64, 70, 10)])
def test_device_matches_reference(device_backend, rng, n, fin, fout):
    B = device_backend
    x, w, b = randn(rng, n, fin), randn(rng, fout, fin), randn(rng, fout)
    for relu in (False, True):
        y = B.linear(*(B.asarray(a) for a in (x, w, b)), relu=relu)
        assert_close(B.to_numpy(y), linear.linear_reference(*f64(x, w, b), relu), 1e-5, "y")
    dy = randn(rng, n, fout)
    grads = B.linear_backward(*(B.asarray(a) for a in (dy, x, w)))
    for got, ref, nm in zip(grads, linear.linear_backward_reference(*f64(dy, x, w)),
                            "dx dw db".split()):
        assert_close(B.to_numpy(got), ref, 1e-5, nm)
