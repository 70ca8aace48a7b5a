"""Helpers for equivalence tests: relative error against a float64 reference, random inputs.

:func:`assert_close` checks two things, because each alone hides errors: the norm-wise
relative error (:func:`rel_error`) is blind to one wrong element among many (one element off
by 3e-3 among 10^5 unit values moves it by 1e-5), and an element-wise bound alone would
accept small errors spread everywhere. The element bound scales with the element and with the
reference's RMS, since round-off in a sum grows with the size of the terms, not of the result
(a near-zero output of large products carries an absolute error of the products' scale).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Default element tolerance / norm tolerance: rounding errors of independent elements have a
# spread whose maximum over 10^5..10^6 elements is about 5 times their RMS, and the RMS is at
# most the norm-wise bound; 10 leaves room for that, while one bad element has to be off by
# tol * sqrt(size) to show in the norm.
ELEM_TOL_FACTOR = 10
SHOWN = 5  # mismatching elements listed in a failure message


def _float64_pair(out, ref):
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if out.shape != ref.shape:
        raise AssertionError(f"shape mismatch: got {out.shape}, reference {ref.shape}")
    return out, ref


def rel_error(out, ref):
    """||out - ref|| / ||ref|| computed in float64 (0 when both are exactly zero)."""
    out, ref = _float64_pair(out, ref)
    denom = np.linalg.norm(ref.ravel())
    num = np.linalg.norm((out - ref).ravel())
    if not np.isfinite(num):
        return float("inf")
    return float(num / denom) if denom > 0 else float(num)


def _same_non_finite(out, ref):
    """Where both hold the same inf, or both NaN: equal values, not errors."""
    with np.errstate(invalid="ignore"):
        return ~np.isfinite(ref) & ((out == ref) | (np.isnan(out) & np.isnan(ref)))


@dataclass(frozen=True)
class Mismatches:
    """The elements of ``out`` farther from ``ref`` than ``elem_tol * (|ref| + scale)``;
    ``scale`` is the RMS of the reference's finite elements (1 if that is 0: then the bound
    is absolute, as :func:`rel_error` is for a zero reference). A non-finite element matches
    only the same inf, or NaN for NaN."""
    count: int
    size: int
    elem_tol: float
    scale: float
    first: tuple  # (index tuple, got, expected) of the first SHOWN mismatches, row-major
    worst: tuple  # (index tuple, got, expected) of the largest |got - expected| / bound

    def __bool__(self):
        return self.count > 0

    def __str__(self):
        if not self.count:
            return f"all {self.size} elements within the element tolerance"
        listed = "; ".join(f"{i}: got {g!r}, expected {e!r}" for i, g, e in self.first)
        more = f" (first {len(self.first)})" if self.count > len(self.first) else ""
        i, g, e = self.worst
        shown = i in [index for index, _, _ in self.first]
        worst = "" if shown else f"; worst {i}: got {g!r}, expected {e!r}"
        return (f"{self.count} of {self.size} elements differ by more than "
                f"{self.elem_tol:.3g} x (|expected| + {self.scale:.3g}){more}: {listed}"
                f"{worst}")


def element_mismatches(out, ref, elem_tol):
    """The :class:`Mismatches` of ``out`` against ``ref`` (shapes must agree)."""
    if not (np.isfinite(elem_tol) and elem_tol >= 0):
        raise ValueError(f"elem_tol must be a finite number >= 0, got {elem_tol!r}")
    out, ref = _float64_pair(out, ref)
    finite_ref = ref[np.isfinite(ref)]
    rms = float(np.sqrt(np.mean(np.square(finite_ref)))) if finite_ref.size else 0.0
    scale = rms if rms > 0 else 1.0
    bound = elem_tol * (np.abs(ref) + scale)
    with np.errstate(invalid="ignore", over="ignore"):
        excess = np.abs(out - ref) / np.where(bound > 0, bound, 1.0)
        close = np.abs(out - ref) <= bound
    both_finite = np.isfinite(out) & np.isfinite(ref)
    bad = np.where(both_finite, ~close, ~_same_non_finite(out, ref))
    count = int(bad.sum())
    if not count:
        return Mismatches(0, out.size, elem_tol, scale, (), ())

    def entry(flat):
        index = tuple(int(v) for v in np.unravel_index(flat, out.shape))
        return index, float(out.flat[flat]), float(ref.flat[flat])

    # a non-finite mismatch ranks above every finite one
    rank = np.where(both_finite, np.nan_to_num(excess), np.inf)
    flat_bad = np.flatnonzero(bad)
    worst = flat_bad[np.argmax(rank.ravel()[flat_bad])]
    return Mismatches(count, out.size, elem_tol, scale,
                      tuple(entry(f) for f in flat_bad[:SHOWN]), entry(worst))


def assert_close(out, ref, tol, what="output", elem_tol=None):
    """Assert ``rel_error(out, ref) <= tol`` and that no element is off by more than
    ``elem_tol`` (default ``ELEM_TOL_FACTOR * tol``) as :func:`element_mismatches` measures
    it; returns the norm-wise error. Positions where both hold the same inf or NaN count as
    equal and are left out of the norm."""
    out, ref = _float64_pair(out, ref)
    elem_tol = ELEM_TOL_FACTOR * tol if elem_tol is None else elem_tol
    keep = ~_same_non_finite(out, ref)
    err = rel_error(out[keep], ref[keep])
    mismatches = element_mismatches(out, ref, elem_tol)
    norm = f"relative error {err:.3g} {'<=' if err <= tol else '>'} {tol:.3g}"
    assert err <= tol and not mismatches, f"{what}: {norm}; {mismatches}"
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


def write_cifar10(root, rng, n):
    """CIFAR-10's binary files (the five training batches and the test batch, ``n`` random
    records each: a label byte, then 3072 pixel bytes) in ``root/cifar-10-batches-bin``;
    returns ``root``, a ``data_dir`` that load_dataset("cifar10", ...) reads."""
    from pathlib import Path
    d = Path(root) / "cifar-10-batches-bin"
    d.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]:
        labels = rng.integers(0, 10, (n, 1), dtype=np.uint8)
        pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        (d / name).write_bytes(np.concatenate([labels, pixels], axis=1).tobytes())
    return Path(root)
