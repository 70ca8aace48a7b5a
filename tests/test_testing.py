"""gpucnn/testing.py's equivalence helpers: the norm-wise error and the element-wise check
that catches what the norm hides, NaN/inf handling and the failure message."""
import numpy as np
import pytest

from gpucnn.testing import ELEM_TOL_FACTOR, assert_close, element_mismatches, rel_error

SHAPE = (10, 100, 100)  # 10^5 elements


def _unit_values():
    # fixed, seed-independent values of unit scale (|v| in [0.75, 1.25], RMS 1.016): the
    # messages below are exact
    i = np.arange(np.prod(SHAPE))
    return (np.where(i % 2, 1.0, -1.0) * (1 + 0.25 * np.cos(i))).reshape(SHAPE)


def test_one_bad_element_among_1e5_fails_with_its_index():
    ref = _unit_values()
    out = ref.copy()
    out[3, 4, 5] += 3e-3
    assert rel_error(out, ref) < 1e-5  # the norm alone would pass it
    with pytest.raises(AssertionError) as exc:
        assert_close(out, ref, 1e-5, "y")
    msg = str(exc.value)
    assert msg.startswith("y: relative error ")
    assert "1 of 100000 elements differ by more than 0.0001 x (|expected| + 1.02)" in msg
    assert f"(3, 4, 5): got {float(out[3, 4, 5])!r}, expected {float(ref[3, 4, 5])!r}" in msg


def test_the_first_five_and_the_worst_are_listed():
    ref = _unit_values()
    out = ref.copy()
    bad = [(0, 0, 1), (0, 5, 0), (1, 2, 3), (2, 0, 0), (4, 4, 4), (5, 5, 5), (9, 99, 99)]
    for i in bad:
        out[i] += 1e-2
    out[bad[-1]] += 1.0  # the worst, and not among the first five
    m = element_mismatches(out, ref, 1e-4)
    assert m.count == 7 and [i for i, _, _ in m.first] == bad[:5]
    assert m.worst[0] == (9, 99, 99)
    text = str(m)
    assert text.startswith("7 of 100000 elements differ") and "(first 5)" in text
    got, want = float(out[9, 99, 99]), float(ref[9, 99, 99])
    assert f"; worst (9, 99, 99): got {got!r}, expected {want!r}" in text


def test_errors_spread_below_the_element_bound_pass():
    ref = _unit_values()
    out = ref * (1 + 1e-6) + 1e-6  # every element off, all within both bounds
    assert assert_close(out, ref, 1e-5) < 1e-5
    assert not element_mismatches(out, ref, ELEM_TOL_FACTOR * 1e-5)


def test_the_element_bound_scales_with_the_element_and_the_rms():
    ref = np.array([1000.0, 1.0, 0.0, -1.0])  # rms 500
    out = ref + np.array([0.9, 0.4, 0.4, 0.6])
    # bound = 1e-3 * (|ref| + 500): 1.5, 0.501, 0.5, 0.501
    m = element_mismatches(out, ref, 1e-3)
    assert m.count == 1 and m.first[0][0] == (3,)


def test_a_zero_reference_uses_an_absolute_bound():
    ref = np.zeros((3, 4))
    out = ref.copy()
    out[1, 2] = 2e-4
    assert element_mismatches(out, ref, 1e-4).count == 1
    assert not element_mismatches(out, ref, 1e-3)


def test_nan_matches_only_nan_and_inf_only_the_same_inf():
    ref = np.array([np.nan, np.inf, -np.inf, 1.0, 2.0, 3.0, np.inf, np.nan])
    out = np.array([np.nan, np.inf, -np.inf, np.nan, np.inf, 3.0, -np.inf, 5.0])
    m = element_mismatches(out, ref, 1e-3)
    assert m.count == 4 and [i for i, _, _ in m.first] == [(3,), (4,), (6,), (7,)]
    assert "got nan, expected 1.0" in str(m)
    with pytest.raises(AssertionError, match="4 of 8 elements"):
        assert_close(out, ref, 1e-5)


def test_matching_non_finite_elements_are_equal_and_left_out_of_the_norm():
    ref = np.array([[np.nan, 1.0], [np.inf, -2.0]])
    out = ref.copy()
    out[0, 1] += 1e-7
    assert 0 < assert_close(out, ref, 1e-6) < 1e-6


def test_the_element_tolerance_can_be_given():
    ref = _unit_values()
    out = ref.copy()
    out[0, 0, 0] += 3e-3
    assert_close(out, ref, 1e-5, elem_tol=1e-2)
    with pytest.raises(ValueError, match="elem_tol must be a finite number >= 0, got -1"):
        assert_close(out, ref, 1e-5, elem_tol=-1)


def test_a_norm_failure_says_the_elements_are_fine():
    ref = _unit_values()
    with pytest.raises(AssertionError, match=r"dx: relative error 1e-05 > 1e-06; all 100000 "
                                             r"elements within the element tolerance"):
        assert_close(ref * (1 + 1e-5), ref, 1e-6, "dx", elem_tol=1e-4)


def test_shapes_must_agree():
    with pytest.raises(AssertionError, match=r"shape mismatch: got \(2, 3\), reference \(3, 2\)"):
        assert_close(np.zeros((2, 3)), np.zeros((3, 2)), 1e-5)
