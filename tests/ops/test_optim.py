"""SGD / Adam updates (gpucnn/ops/optim.py, kernels/optim.cu): the reference against
PyTorch's formulas written out independently; the kernels (emu, three orders) against it."""
import numpy as np
import pytest

from gpucnn.ops import optim
from gpucnn.testing import assert_close, f64, randn, rel_error

TOL = 1e-5


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_reference_is_pytorchs_formula(rng, nesterov):
    p0 = rng.standard_normal(10)
    p, v = p0.copy(), np.zeros(10)
    ref_p, ref_buf = p0.copy(), None
    for _ in range(3):
        g = rng.standard_normal(10)
        optim.sgd_update_reference(p, g, v, 0.1, 0.9, 0.01, nesterov)
        d = g + 0.01 * ref_p
        ref_buf = d if ref_buf is None else 0.9 * ref_buf + d  # PyTorch: first step v = d
        ref_p = ref_p - 0.1 * (d + 0.9 * ref_buf if nesterov else ref_buf)
    assert rel_error(p, ref_p) < 1e-14


def test_adam_reference_is_pytorchs_formula(rng):
    p0 = rng.standard_normal(10)
    p, m, v = p0.copy(), np.zeros(10), np.zeros(10)
    rm, rv, rp = np.zeros(10), np.zeros(10), p0.copy()
    for t in range(1, 4):
        g = rng.standard_normal(10)
        optim.adam_update_reference(p, g, m, v, 1e-2, 0.9, 0.999, 1e-8, 0.0, t)
        rm = 0.9 * rm + 0.1 * g
        rv = 0.999 * rv + 0.001 * g * g
        rp = rp - 1e-2 * (rm / (1 - 0.9 ** t)) / (np.sqrt(rv / (1 - 0.999 ** t)) + 1e-8)
    assert rel_error(p, rp) < 1e-12


@pytest.mark.parametrize("momentum,weight_decay,nesterov", [
    (0.0, 0.0, False),     # plain SGD
    (0.9, 0.0, False),     # momentum
    (0.9, 0.0, True),      # Nesterov
    (0.9, 5e-4, False),    # AlexNet: momentum + weight decay
    (0.5, 1e-2, True),
])
def test_sgd_device(device_backend, reference_backend, rng, momentum, weight_decay, nesterov):
    B, R = device_backend, reference_backend
    shape, lr = (7, 13), 0.05
    p0 = randn(rng, *shape)
    v0 = 0.1 * randn(rng, *shape)  # mid-training velocity (plain SGD must leave it alone)
    param, velocity = B.asarray(p0), B.asarray(v0)
    param_ref, velocity_ref = f64(p0, v0)
    for step in range(3):
        g = randn(rng, *shape)
        B.sgd_update(param, B.asarray(g), velocity, lr, momentum, weight_decay, nesterov)
        R.sgd_update(param_ref, f64(g)[0], velocity_ref, lr, momentum, weight_decay, nesterov)
        assert_close(B.to_numpy(param), param_ref, TOL, f"param after step {step + 1}")
        assert_close(B.to_numpy(velocity), velocity_ref, TOL, f"velocity after {step + 1}")


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_adam_device(device_backend, reference_backend, rng, weight_decay):
    B, R = device_backend, reference_backend
    shape, lr, beta1, beta2, eps = (5, 11), 1e-2, 0.9, 0.999, 1e-8
    p0 = randn(rng, *shape)
    m0 = 0.1 * randn(rng, *shape)
    v0 = 0.01 * randn(rng, *shape) ** 2  # a running second moment: positive
    param, m, v = B.asarray(p0), B.asarray(m0), B.asarray(v0)
    param_ref, m_ref, v_ref = f64(p0, m0, v0)
    for step in range(1, 5):
        g = randn(rng, *shape)
        B.adam_update(param, B.asarray(g), m, v, lr, beta1, beta2, eps, weight_decay, step)
        R.adam_update(param_ref, f64(g)[0], m_ref, v_ref, lr, beta1, beta2, eps, weight_decay,
                      step)
        assert_close(B.to_numpy(param), param_ref, TOL, f"param after step {step}")
        assert_close(B.to_numpy(m), m_ref, TOL, f"m after step {step}")
        assert_close(B.to_numpy(v), v_ref, TOL, f"v after step {step}")
