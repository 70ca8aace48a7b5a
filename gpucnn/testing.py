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
