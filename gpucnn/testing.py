"""Helpers for equivalence tests: relative error against a float64 reference, random inputs."""
from __future__ import annotations

import numpy as np


def rel_error(out, ref):
    """||out - ref|| / ||ref|| computed in float64 (0 when both are exactly zero)."""
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if out.shape != ref.shape:
        raise AssertionError(f"shape mismatch: got {out.shape}, reference {ref.shape}")
    denom = np.linalg.norm(ref.ravel())
    num = np.linalg.norm((out - ref).ravel())
    if not np.isfinite(num):
        return float("inf")
    return float(num / denom) if denom > 0 else float(num)


def assert_close(out, ref, tol, what="output"):
    err = rel_error(out, ref)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:.3g}"
    return err


def randn(rng, *shape, dtype=np.float32):
    """Standard normal, never all zeros."""
    return rng.standard_normal(shape).astype(dtype)


def central_difference(f, arr, index, eps=1e-6):
    """(f(arr with arr.flat[index] + eps) - f(... - eps)) / (2 eps), restoring arr in place."""
    flat = arr.reshape(-1)
    old = flat[index]
    flat[index] = old + eps
    fp = f()
    flat[index] = old - eps
    fm = f()
    flat[index] = old
    return (fp - fm) / (2 * eps)


def check_gradient_entries(f, arr, grad, indices, eps=1e-6, atol=1e-6, rtol=1e-5):
    """Assert grad.flat[i] matches the central difference of scalar f() for each index."""
    gflat = np.asarray(grad).reshape(-1)
    for i in indices:
        num = central_difference(f, arr, i, eps)
        assert abs(num - gflat[i]) <= atol + rtol * abs(num), (
            f"gradient entry {i} of an array of shape {arr.shape}: analytic {gflat[i]!r}, "
            f"numerical {num!r}")


def numeric_grad(f, x, cot, eps=1e-6):
    """Gradient of sum(cot * f()) w.r.t. x by central differences (x modified in place and
    restored): exact up to O(eps^2) and round-off since the loss is linear in f's output."""
    loss = lambda: np.sum(cot * f())  # noqa: E731
    return np.array([central_difference(loss, x, i, eps) for i in range(x.size)]).reshape(
        x.shape)


def f64(*arrays):
    """The arrays as float64 NumPy arrays (the reference is run in float64)."""
    return tuple(np.asarray(a, dtype=np.float64) for a in arrays)


def to_backend(B, *arrays):
    return tuple(B.asarray(a) for a in arrays)


def to_host(B, *arrays):
    return tuple(B.to_numpy(a) for a in arrays)
