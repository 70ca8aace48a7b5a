"""Checks shared by the tests of the ops on bf16 activations (gpucnn/ops/storage.py:
uint16 arrays of bfloat16 bits): bf16-exact inputs, bit equality, the bf16 GEMM error bound."""
import numpy as np
import pytest

from gpucnn.ops.precision import bf16_to_float32, round_bf16
from gpucnn.ops.storage import BF16
from gpucnn.testing import SHOWN, assert_close

BF16_U = 2.0 ** -8        # bf16's unit roundoff (7 stored mantissa bits)
EMU_BF16_POISON = 0xFFC1  # what the emulator's ctx.empty fills uint16 outputs with


@pytest.fixture
def B(device_precision):
    """The device backend in precision bf16 (made once per session: conftest's cache); a test
    module imports it to use it."""
    b = device_precision("bf16")
    assert b.precision == "bf16"
    return b


def dev16(B, bits):
    """bf16 bits (uint16, host) on backend ``B``."""
    return B.asarray(bits, BF16)


def bf16_exact(rng, shape):
    """(bits, their float32 values) of standard normal draws rounded to bf16."""
    bits = round_bf16(rng.standard_normal(shape).astype(np.float32))
    return bits, bf16_to_float32(bits)


def assert_bits_equal(out, want, what):
    """Two bf16 tensors (uint16) equal bit for bit, none of ``out``'s elements left at the
    emulator's poison."""
    assert out.dtype == np.uint16 and out.shape == want.shape, (what, out.dtype, out.shape)
    assert not (out == EMU_BF16_POISON).any(), f"{what}: elements left unwritten (poison)"
    diff = np.flatnonzero(out != want)
    assert diff.size == 0, (f"{what}: {diff.size} of {out.size} differ, first at "
                            f"{diff[:SHOWN]}: {out.ravel()[diff[:SHOWN]]} != "
                            f"{want.ravel()[diff[:SHOWN]]}")


def bf16_gemm_bound(K):
    """Norm-wise error of a bf16 GEMM-like output of reduction length K against float64,
    relative to || |A||B| ||: both operands rounded (2u + u^2), the FP32 sums (K 2^-24), and
    one more rounding of a bf16 output (u)."""
    return 2 * BF16_U + BF16_U * BF16_U + K * 2.0 ** -24 + BF16_U


def assert_within(out, ref, magnitude, factor, what):
    """:func:`assert_close` with the tolerance ``factor * ||magnitude|| / ||ref||`` (e.g.
    magnitude = |A||B|, the size of the products summed) and 4 times that per element."""
    tol = factor * float(np.linalg.norm(magnitude)) / float(np.linalg.norm(ref))
    return assert_close(out, ref, tol, what, elem_tol=tol * 4)
