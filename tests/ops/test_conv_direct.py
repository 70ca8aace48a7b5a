"""The ``direct`` CPU convolution (gpucnn/ops/conv/direct.py + direct.cpp, built for this CPU)
against the float64 plain reference: forward (+ bias, ReLU), dx, dW and db, the fused
conv + ReLU + max-pool forward and backward, the fallbacks (float64, no compiler), and the
native build cache (gpucnn/cpu/native.py).

Bound: ‖out − ref‖ / ‖ref‖ < 1e-5 for every float32 result (the loops sum in float32 in a
fixed order; measured 1e-7..5e-7 here), and no element off by more than 1e-4 (|ref| +
rms(ref)) (assert_close). Switches must equal the reference's exactly.
"""
import os
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest

from gpucnn.backends.numpy_backend import NumpyBackend
from gpucnn.ops.conv import algos, conv_geometry, direct
from gpucnn.ops.conv import reference as conv_ref
from gpucnn.ops.pool import pool_geometry
from gpucnn.ops.pool import reference as pool_ref
from gpucnn.testing import assert_close

BOUND = 1e-5
# Without g++ these FAIL (the README's promise), each with one line naming the compiler.
needs_native = pytest.mark.usefixtures("native_kernels")
# (N, C, H, W), F, (kh, kw), padding: LeNet's two layers, odd sizes, rectangles, 'same' with
# an even kernel (asymmetric padding), 1x1, channel blocks of 8 + remainders, F x K past the
# direct dW limit (its dW then runs as Winograd for 3x3 and 5x5, else on the GEMM)
CASES = {
    "lenet_conv1": ((5, 1, 28, 28), 6, (5, 5), 2),
    "lenet_conv2": ((4, 6, 14, 14), 16, (5, 5), 0),
    "odd_13_channels": ((3, 5, 9, 7), 13, (3, 3), 1),
    "rect_kernel": ((2, 3, 8, 11), 9, (2, 4), (1, 3)),
    "same_even": ((2, 4, 7, 6), 5, (4, 4), "same"),
    "k1": ((3, 7, 5, 5), 17, (1, 1), 0),
    "tiny_plane": ((6, 2, 1, 1), 3, (3, 3), "same"),
    "wide_rows": ((2, 3, 4, 40), 4, (3, 3), 1),
    "dw_winograd_3x3": ((2, 64, 6, 6), 64, (3, 3), 1),
    "dw_winograd_5x5": ((3, 32, 7, 7), 48, (5, 5), 2),
    "dw_by_gemm_7x7": ((2, 16, 8, 8), 64, (7, 7), 3),
    # 32 images or more: the lanes layout (V images a vector; 35, 34 and 33 leave a group
    # part full, whose idle lanes must not add to dW)
    "lanes_lenet_conv2": ((35, 6, 14, 14), 16, (5, 5), 0),
    "lanes_odd": ((33, 3, 9, 7), 13, (3, 3), 1),
    "lanes_same_even": ((32, 2, 6, 5), 5, (4, 4), "same"),
    "lanes_many_channels": ((34, 64, 5, 5), 64, (3, 3), 1),
    "lanes_conv1_dw_wide": ((33, 1, 12, 12), 6, (5, 5), 2),  # few taps: dW stays wide
}


def _inputs(case, seed_extra=()):
    x_shape, F, (kh, kw), padding = CASES[case]
    rng = np.random.default_rng(zlib.crc32(repr((case, seed_extra)).encode()))
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal((F, x_shape[1], kh, kw)) / np.sqrt(x_shape[1] * kh * kw)
    b = rng.standard_normal(F)
    return x, w, b, padding, rng


def _f32(*arrays):
    return [a.astype(np.float32) for a in arrays]


@needs_native
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("threads", [1, 3])
def test_forward_matches_reference(case, relu, threads):
    x, w, b, padding, _ = _inputs(case, (relu, threads))
    g = conv_geometry(x.shape, w.shape, 1, padding)
    ref = conv_ref.conv2d(x, w, b, g, relu)
    B = NumpyBackend(threads=threads)
    first = B.conv2d(*_f32(x, w, b), padding=padding, relu=relu, algo="direct")
    first.fill(np.nan)  # poisoned: a recycled output block must be written everywhere
    del first
    y = B.conv2d(*_f32(x, w, b), padding=padding, relu=relu, algo="direct")
    assert y.dtype == np.float32 and y.shape == ref.shape
    assert_close(y, ref, BOUND, "y")
    y_nobias = B.conv2d(*_f32(x, w), padding=padding, relu=relu, algo="direct")
    assert_close(y_nobias, conv_ref.conv2d(x, w, None, g, relu), BOUND, "y without bias")


@needs_native
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("need", [(True, True), (True, False), (False, True)])
def test_backward_matches_reference(case, need):
    x, w, _, padding, rng = _inputs(case, need)
    g = conv_geometry(x.shape, w.shape, 1, padding)
    dy = rng.standard_normal(g.y_shape)
    rdx, rdw, rdb = conv_ref.conv2d_backward(dy, x, w, g)
    B = NumpyBackend(threads=2)
    dx, dw, db = B.conv2d_backward(*_f32(dy, x, w), padding=padding, need_dx=need[0],
                                   need_dw=need[1], algo="direct")
    if need[0]:
        assert dx.dtype == np.float32
        assert_close(dx, rdx, BOUND, "dx")
    else:
        assert dx is None
    if need[1]:
        assert_close(dw, rdw, BOUND, "dw")
        assert_close(db, rdb, BOUND, "db")
    else:
        assert dw is None and db is None


def test_lanes_cases_use_the_lanes_layout():
    if direct.available():
        assert direct.lanes_layout(32) and not direct.lanes_layout(6)


@needs_native
def test_results_depend_only_on_the_thread_count():
    x, w, b, padding, rng = _inputs("lenet_conv2")
    args = _f32(x, w, b)
    dy = rng.standard_normal(NumpyBackend().conv2d(*args, padding=padding).shape)
    runs = []
    for _ in range(2):
        B = NumpyBackend(threads=2)
        y = B.conv2d(*args, padding=padding, algo="direct")
        runs.append((y, *B.conv2d_backward(dy.astype(np.float32), *args[:2], padding=padding,
                                           algo="direct")))
    for a, c in zip(*runs):
        assert np.array_equal(a, c)


def _pool_cases():
    # conv case, pool kernel, stride: LeNet's 2/2 (the vectorised path), AlexNet's
    # overlapping 3/2 (the backward adds where windows share a switch), 3/3, a rectangle, a
    # floor crop, and layers whose dW runs past direct.cpp (a dense dy is built)
    return [("lenet_conv1", 2, 2), ("lenet_conv2", 2, 2), ("odd_13_channels", 3, 2),
            ("wide_rows", (2, 3), (2, 3)), ("rect_kernel", 3, 3), ("same_even", 2, 2),
            ("dw_winograd_5x5", 3, 2), ("dw_by_gemm_7x7", 2, 2), ("lanes_lenet_conv2", 2, 2),
            ("lanes_odd", 3, 2), ("lanes_same_even", (2, 3), (2, 1))]


def _fused_reference(x, w, b, padding, ksize, stride):
    g = conv_geometry(x.shape, w.shape, 1, padding)
    a = conv_ref.conv2d(x, w, b, g, True)
    pg = pool_geometry(a.shape, ksize, stride, 0)
    y, sw = pool_ref.max_pool2d(a, pg)
    return g, pg, y, sw


@needs_native
@pytest.mark.parametrize("case,ksize,stride", _pool_cases())
@pytest.mark.parametrize("ties", [False, True])
def test_fused_forward_matches_reference(case, ksize, stride, ties):
    """Ties: inputs and weights of small integers, so conv outputs repeat inside windows
    (and ReLU makes zeros): the switch must be the reference's first maximum."""
    x, w, b, padding, rng = _inputs(case, (ksize, stride, ties))
    if ties:
        x, w, b = (np.round(a * 1.5) for a in (x, w, b))
    x, w, b = (a.astype(np.float32).astype(np.float64) for a in (x, w, b))
    _, pg, ref_y, ref_sw = _fused_reference(x, w, b, padding, ksize, stride)
    B = NumpyBackend(threads=2)
    first = B.conv2d_relu_maxpool(*_f32(x, w, b), padding=padding, kernel_size=ksize,
                                  pool_stride=stride, algo="direct")
    for a in first:
        a.fill(-7)  # poisoned
    del first
    y, sw = B.conv2d_relu_maxpool(*_f32(x, w, b), padding=padding, kernel_size=ksize,
                                  pool_stride=stride, algo="direct")
    assert_close(y, ref_y, BOUND, "y")
    if ties:  # integer sums: exact in float32, so the switches must agree everywhere
        assert np.array_equal(y, ref_y)
        assert np.array_equal(sw, ref_sw)
        assert (ref_y == 0).any()  # the case has ReLU ties
    else:
        assert np.mean(sw == ref_sw) > 0.999  # float32 rounding may swap a near-tie


@needs_native
def test_fused_forward_nan_wins_its_window():
    x, w, b, padding, _ = _inputs("lenet_conv1")
    x[1, 0, 5, 7] = np.nan
    x = x.astype(np.float32).astype(np.float64)
    _, _, ref_y, ref_sw = _fused_reference(x, w, b, padding, 2, 2)
    y, sw = NumpyBackend().conv2d_relu_maxpool(*_f32(x, w, b), padding=padding,
                                               algo="direct")
    nan = np.isnan(ref_y)
    assert nan.any() and np.array_equal(np.isnan(y), nan)
    assert np.array_equal(sw[nan], ref_sw[nan])
    assert_close(y, ref_y, BOUND, "y")  # a NaN matches only a NaN


@needs_native
@pytest.mark.parametrize("n", [1, 33])
def test_a_non_finite_input_spoils_only_the_taps_that_read_it(n):
    """An inf at the end of an input row: in the wide layout the positions past each output
    row read it too (junk), yet dW and dx must be non-finite exactly where the reference's
    are; the lanes layout (33 images) has no junk."""
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 2, 6, 6))
    x[0, 1, 2, 5] = np.inf
    w = rng.standard_normal((3, 2, 3, 3)) / 3
    g = conv_geometry(x.shape, w.shape, 1, 0)
    dy = rng.standard_normal(g.y_shape)
    ref = conv_ref.conv2d_backward(dy, x, w, g)
    with np.errstate(invalid="ignore"):
        got = NumpyBackend(threads=2).conv2d_backward(*_f32(dy, x, w), algo="direct")
    for name, u, v in zip(("dx", "dw", "db"), got, ref):
        assert_close(u, v, BOUND, name)  # non-finite exactly where the reference's are
    assert not np.isfinite(ref[1]).all()  # the case has non-finite taps


@needs_native
@pytest.mark.parametrize("case,ksize,stride", _pool_cases())
@pytest.mark.parametrize("need", [(True, True), (False, True), (True, False)])
def test_fused_backward_matches_reference(case, ksize, stride, need):
    x, w, b, padding, rng = _inputs(case, (ksize, stride, need))
    B = NumpyBackend(threads=2)
    kw = dict(padding=padding, kernel_size=ksize, pool_stride=stride, algo="direct")
    y, sw = B.conv2d_relu_maxpool(*_f32(x, w, b), **kw)
    dy = rng.standard_normal(y.shape)
    # the reference: the pool's and ReLU's backward through the switches, then the conv's
    g = conv_geometry(x.shape, w.shape, 1, padding)
    pg = pool_geometry(g.y_shape, ksize, stride, 0)
    da = pool_ref.max_pool2d_backward(np.where(y > 0, dy, 0.0), sw, pg)
    rdx, rdw, rdb = conv_ref.conv2d_backward(da, x, w, g)
    dx, dw, db = B.conv2d_relu_maxpool_backward(dy.astype(np.float32), sw, y, *_f32(x, w),
                                                need_dx=need[0], need_dw=need[1], **kw)
    assert (dx is None) != need[0] and (dw is None) != need[1]
    if need[0]:
        assert_close(dx, rdx, BOUND, "dx")
    if need[1]:
        assert_close(dw, rdw, BOUND, "dw")
        assert_close(db, rdb, BOUND, "db")


@needs_native
def test_fused_backward_rejects_bad_switches():
    x, w, b, padding, _ = _inputs("lenet_conv2")
    B = NumpyBackend()
    y, sw = B.conv2d_relu_maxpool(*_f32(x, w, b), padding=padding, algo="direct")
    sw = sw.copy()
    sw[0, 0, 0, 0] = 10 * 10  # one past the conv output plane
    with pytest.raises(ValueError, match="switches"):
        B.conv2d_relu_maxpool_backward(np.ones_like(y), sw, y, *_f32(x, w), padding=padding,
                                       algo="direct")


def test_float64_runs_the_wide_path_in_float64():
    x, w, b, padding, rng = _inputs("odd_13_channels")
    g = conv_geometry(x.shape, w.shape, 1, padding)
    B = NumpyBackend()
    y = B.conv2d(x, w, b, padding=padding, algo="direct" if direct.available() else "wide")
    assert y.dtype == np.float64
    assert_close(y, conv_ref.conv2d(x, w, b, g, False), 1e-12, "y")


def test_registered_and_auto_choice():
    assert "direct" in algos.names("cpu")
    x = np.ones((2, 3, 8, 8), np.float32)
    B = NumpyBackend()
    B.conv2d(x, np.ones((4, 3, 3, 3), np.float32), padding=1)
    assert set(B.conv_algorithms().values()) == {"direct" if direct.available() else "wide"}
    # padding >= the kernel: not direct's (a clear error when asked for by name)
    with pytest.raises(ValueError, match="direct.*padding smaller than the kernel"):
        B.conv2d(x, np.ones((4, 3, 3, 3), np.float32), padding=3, algo="direct")
    with pytest.raises(ValueError, match="direct.*stride 1"):
        B.conv2d(x, np.ones((4, 3, 3, 3), np.float32), stride=2, algo="direct")


def _child(code, **env):
    full = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=full, timeout=300)


def test_without_a_compiler_auto_falls_back_and_naming_it_is_a_clear_error(tmp_path):
    out = _child("""
        import numpy as np
        from gpucnn.backends.numpy_backend import NumpyBackend
        from gpucnn.ops.conv import direct
        assert not direct.available()
        print("REASON", direct.unavailable_reason())
        B = NumpyBackend()
        x = np.ones((2, 3, 8, 8), np.float32)
        y = B.conv2d(x, np.ones((4, 3, 3, 3), np.float32), padding=1)
        assert float(y[0, 0, 4, 4]) == 27.0
        print("AUTO", sorted(set(B.conv_algorithms().values())))
        try:
            B.conv2d(x, np.ones((4, 3, 3, 3), np.float32), padding=1, algo="direct")
        except ValueError as e:
            print("ERROR", e)
        """, GPUCNN_CXX=str(tmp_path / "no-such-g++"), GPUCNN_CACHE_DIR=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "REASON no C++ compiler" in out.stdout and "GPUCNN_CXX" in out.stdout
    assert "AUTO ['wide']" in out.stdout
    assert "ERROR conv2d: algo='direct' needs" in out.stdout and "C++" in out.stdout


@needs_native
def test_native_cache_rebuilds_a_damaged_library(tmp_path):
    code = """
        import warnings
        warnings.simplefilter("always")
        import numpy as np
        from gpucnn.ops.conv import direct
        assert direct.available(), direct.unavailable_reason()
        from gpucnn.backends.numpy_backend import NumpyBackend
        y = NumpyBackend().conv2d(np.ones((1, 1, 4, 4), np.float32),
                                  np.ones((1, 1, 3, 3), np.float32), algo="direct")
        print("SUM", float(y.sum()))
        """
    first = _child(code, GPUCNN_CACHE_DIR=str(tmp_path))
    assert first.returncode == 0 and "SUM 36.0" in first.stdout, first.stderr
    libs = list((tmp_path / "native").glob("direct-*.so"))
    assert len(libs) == 1
    libs[0].write_bytes(libs[0].read_bytes()[:1000])  # truncated
    second = _child(code, GPUCNN_CACHE_DIR=str(tmp_path))
    assert second.returncode == 0 and "SUM 36.0" in second.stdout, second.stderr
    assert "damaged" in second.stderr and "rebuilding" in second.stderr


_OTHER_ISA_CHECK = """
import numpy as np
from gpucnn.backends.numpy_backend import NumpyBackend
from gpucnn.ops.conv import conv_geometry, direct
from gpucnn.ops.conv import reference as conv_ref
from gpucnn.ops.pool import pool_geometry
from gpucnn.ops.pool import reference as pool_ref
from gpucnn.testing import assert_close
assert direct.available(), direct.unavailable_reason()
print("LANES", direct.lanes())
rng = np.random.default_rng(5)
B = NumpyBackend(threads=2)
worst = 0.0
for n, c, h, f, k, pad, pool in ((4, 6, 14, 16, 5, 0, 2), (35, 3, 9, 13, 3, 1, 3),
                                 (19, 1, 12, 6, 5, 2, 2)):
    x = rng.standard_normal((n, c, h, h)).astype(np.float32).astype(np.float64)
    w = (rng.standard_normal((f, c, k, k)) / k).astype(np.float32).astype(np.float64)
    b = rng.standard_normal(f).astype(np.float32).astype(np.float64)
    g = conv_geometry(x.shape, w.shape, 1, pad)
    f32 = [a.astype(np.float32) for a in (x, w, b)]
    y = B.conv2d(*f32, padding=pad, relu=True, algo="direct")
    worst = max(worst, assert_close(y, conv_ref.conv2d(x, w, b, g, True), BOUND, "y"))
    dy = rng.standard_normal(g.y_shape)
    got = B.conv2d_backward(dy.astype(np.float32), *f32[:2], padding=pad, algo="direct")
    for u, v in zip(got, conv_ref.conv2d_backward(dy, x, w, g)):
        worst = max(worst, assert_close(u, v, BOUND, "backward"))
    yq, sw = B.conv2d_relu_maxpool(*f32, padding=pad, kernel_size=pool, pool_stride=2,
                                   algo="direct")
    pg = pool_geometry(g.y_shape, pool, 2, 0)
    ref_yq, ref_sw = pool_ref.max_pool2d(conv_ref.conv2d(x, w, b, g, True), pg)
    worst = max(worst, assert_close(yq, ref_yq, BOUND, "fused y"))
    assert np.mean(sw == ref_sw) > 0.999
    dq = rng.standard_normal(yq.shape)
    got = B.conv2d_relu_maxpool_backward(dq.astype(np.float32), sw, yq, *f32[:2], padding=pad,
                                         kernel_size=pool, pool_stride=2, algo="direct")
    da = pool_ref.max_pool2d_backward(np.where(yq > 0, dq, 0.0), sw, pg)
    for u, v in zip(got, conv_ref.conv2d_backward(da, x, w, g)):
        worst = max(worst, assert_close(u, v, BOUND, "fused backward"))
print("WORST", worst)
"""


@needs_native
@pytest.mark.parametrize("extra,lanes", [("-mno-avx512f", 8),
                                         ("-mno-avx512f -mno-avx2 -mno-fma -mno-avx", 4)])
def test_the_avx2_and_sse_builds_match_the_reference(extra, lanes, tmp_path):
    """direct.cpp built for narrower vectors (8 floats: AVX2; 4: SSE), as on CPUs without
    AVX-512: both layouts, the fused pools and the backward still match the reference."""
    out = _child(f"BOUND = {BOUND!r}\n{_OTHER_ISA_CHECK}", GPUCNN_NATIVE_FLAGS=extra,
                 GPUCNN_CACHE_DIR=str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"LANES {lanes}" in out.stdout
    worst = float(out.stdout.split("WORST")[1])
    assert worst < BOUND, worst
