"""B.to_bf16 / B.from_bf16 (gpucnn/ops/cast.py, kernels/cast.cu): the device kernels against
the definitions (gpucnn.ops.precision.round_bf16 / bf16_to_float32), bit for bit."""
import numpy as np
import pytest

from gpucnn.ops.precision import BF16_NAN, bf16_to_float32, round_bf16

SPECIAL = np.array([0.0, -0.0, 1.0, 1.00390625, 1.01171875, -2.5, np.inf, -np.inf, np.nan,
                    -np.nan, 3.39e38, 3.4e38, -3.4e38, 1e-40, -1e-45, 1.1754944e-38],
                   np.float32)


def _values(rng, n=3001):
    """Random float32 over many binades (halfway cases included) plus the special values."""
    x = (rng.standard_normal(n) * 2.0 ** rng.integers(-30, 30, n)).astype(np.float32)
    ties = (rng.integers(0, 1 << 16, 64).astype(np.uint32) << 16) | np.uint32(0x8000)
    return np.concatenate([x, ties.view(np.float32), SPECIAL]).reshape(-1)


def test_to_bf16_is_round_bf16(device_backend, rng):
    B = device_backend
    x = _values(rng).reshape(1, -1)
    got = B.to_numpy(B.to_bf16(B.asarray(x)))
    assert got.dtype == np.uint16 and got.shape == x.shape
    want = round_bf16(x)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, f"{bad.size} mismatches, first at {x.ravel()[bad[0]]!r}"
    nans = got.ravel()[np.isnan(x.ravel())]
    assert nans.size >= 2 and (nans == BF16_NAN).all()


def test_from_bf16_is_exact(device_backend, rng):
    B = device_backend
    bits = rng.integers(0, 1 << 16, (7, 513)).astype(np.uint16)
    got = B.to_numpy(B.from_bf16(B.asarray(bits, dtype=np.uint16)))
    want = bf16_to_float32(bits)
    assert got.dtype == np.float32
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("backend", ["reference", "numpy"])
def test_host_backends_round_alike(backend, rng):
    from gpucnn import get_backend
    B = get_backend(backend)
    x = _values(rng, 257)
    assert np.array_equal(B.to_bf16(B.asarray(x)), round_bf16(x))
    assert np.array_equal(B.from_bf16(round_bf16(x)).view(np.uint32),
                          bf16_to_float32(round_bf16(x)).view(np.uint32))


def test_wrong_dtypes_are_refused(device_backend):
    B = device_backend
    with pytest.raises(TypeError, match="x must have dtype float32, got uint16"):
        B.to_bf16(B.asarray(np.zeros(4, np.uint16), dtype=np.uint16))
    with pytest.raises(TypeError, match="x must have dtype uint16, got float32"):
        B.from_bf16(B.asarray(np.zeros(4, np.float32)))
