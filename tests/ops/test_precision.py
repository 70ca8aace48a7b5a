"""gpucnn.ops.precision: the TF32 / BF16 rounding references, bit by bit."""
import numpy as np
import pytest

from gpucnn.ops.precision import bf16_to_float32, round_bf16, round_tf32, truncate_tf32


def f32(bits):
    return np.array(bits, dtype=np.uint32).view(np.float32)


def bits(x):
    return np.asarray(x, dtype=np.float32).view(np.uint32)


def test_tf32_ties_round_away_from_zero():
    # 1 + 2^-11 is exactly halfway between 1 and 1 + 2^-10: away from zero goes up (ties to
    # even would stay at 1); the same magnitude negative goes down
    tie = f32(0x3F800000 | 0x1000)
    assert bits(round_tf32(tie)) == 0x3F802000
    assert bits(round_tf32(-tie)) == 0xBF802000
    # an odd kept part: still away from zero (ties to even would also go up; the even case
    # above is the one that tells the rules apart)
    assert bits(round_tf32(f32(0x3F803000))) == 0x3F804000
    # just below / above the tie
    assert bits(round_tf32(f32(0x3F800FFF))) == 0x3F800000
    assert bits(round_tf32(f32(0x3F801001))) == 0x3F802000


def test_tf32_carry_into_exponent_subnormals_and_zero():
    assert bits(round_tf32(f32(0x3FFFF000))) == 0x40000000          # 2 - 2^-11 rounds to 2
    assert bits(round_tf32(f32(0x00001000))) == 0x00002000          # subnormal tie: away
    assert bits(round_tf32(f32(0x007FF000))) == 0x00800000          # to the smallest normal
    assert bits(truncate_tf32(f32(0x007FFFFF))) == 0x007FE000
    assert bits(round_tf32(f32(0x00000FFF))) == 0                   # below half the smallest tf32
    assert bits(round_tf32(np.float32(-0.0))) == 0x80000000          # negative zero kept
    assert bits(truncate_tf32(np.float32(-0.0))) == 0x80000000


def test_tf32_overflow_inf_and_nan():
    max_tf32 = 0x7F7FE000
    assert bits(round_tf32(f32(0x7F7FEFFF))) == max_tf32            # below the midpoint
    assert bits(round_tf32(f32(0x7F7FF000))) == 0x7F800000          # the midpoint: +inf
    assert bits(round_tf32(np.finfo(np.float32).max)) == 0x7F800000
    assert bits(round_tf32(-np.finfo(np.float32).max)) == 0xFF800000
    assert bits(truncate_tf32(np.finfo(np.float32).max)) == max_tf32  # truncation never overflows
    for fn in (round_tf32, truncate_tf32):
        assert bits(fn(np.float32(np.inf))) == 0x7F800000
        assert bits(fn(np.float32(-np.inf))) == 0xFF800000
        # NaNs whose payload lies only in the dropped bits must stay NaN, sign kept
        for nan in (0x7F800001, 0xFF800001, 0x7FC00000, 0x7F801FFF):
            out = bits(fn(f32(nan)))
            assert np.isnan(f32(out)) and out & 0x1FFF == 0 and out >> 31 == nan >> 31


def test_tf32_random_against_an_integer_definition(rng):
    u = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    u = u[(u & 0x7F800000) != 0x7F800000]                           # finite only
    x = f32(u)
    sign, mag = u & 0x80000000, (u & 0x7FFFFFFF).astype(np.int64)
    # round half away from zero on the magnitude, as integers: floor(mag / 2^13 + 1/2) * 2^13
    want = (((mag + 4096) >> 13) << 13)
    want = np.where(want >= 0x7F800000, 0x7F800000, want)           # overflow -> inf
    np.testing.assert_array_equal(bits(round_tf32(x)), sign | want.astype(np.uint32))
    np.testing.assert_array_equal(bits(truncate_tf32(x)), u & ~np.uint32(0x1FFF))
    # the relative error bounds the tests of the tensor-core emulation rely on
    normal = (np.abs(x) >= np.finfo(np.float32).tiny) & (np.abs(x) < 1e38)
    xn = x[normal].astype(np.float64)
    assert np.all(np.abs(round_tf32(x[normal]) - xn) <= 2.0**-11 * np.abs(xn))
    assert np.all(np.abs(truncate_tf32(x[normal]) - xn) < 2.0**-10 * np.abs(xn))


def test_bf16_ties_to_even_and_specials():
    assert round_bf16(f32(0x3F808000)) == 0x3F80                     # tie, kept part even: stays
    assert round_bf16(f32(0x3F818000)) == 0x3F82                     # tie, odd: up to even
    assert round_bf16(f32(0xBF818000)) == 0xBF82
    assert round_bf16(f32(0x3F808001)) == 0x3F81
    assert round_bf16(f32(0x00008000)) == 0x0000                     # subnormal tie to even
    assert round_bf16(f32(0x00018000)) == 0x0002
    assert round_bf16(np.float32(-0.0)) == 0x8000
    assert round_bf16(f32(0x7F7F7FFF)) == 0x7F7F                     # largest bf16
    assert round_bf16(f32(0x7F7F8000)) == 0x7F80                     # midpoint: +inf
    assert round_bf16(np.float32(-np.inf)) == 0xFF80
    for nan in (0x7F800001, 0xFFC00000, 0x7F80FFFF):
        assert np.isnan(bf16_to_float32(round_bf16(f32(nan))))
    with pytest.raises(TypeError, match="uint16"):
        bf16_to_float32(np.zeros(2, np.float32))


def test_bf16_round_trip_is_exact():
    every = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    x = bf16_to_float32(every)
    finite = np.isfinite(x)
    np.testing.assert_array_equal(round_bf16(x[finite]), every[finite])
    np.testing.assert_array_equal(bits(x), every.astype(np.uint32) << 16)


def test_bf16_matches_torch(rng):
    torch = pytest.importorskip("torch")
    u = rng.integers(0, 2**32, 1_000_000, dtype=np.uint64).astype(np.uint32)
    x = np.concatenate([f32(u), rng.standard_normal(100_000).astype(np.float32)])
    x = x[~np.isnan(x)]                                              # NaN bit patterns differ
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(round_bf16(x), want)
