"""The Winograd CPU convolutions (gpucnn/ops/conv/winograd.py: ``algo="winograd_f2"`` /
``"winograd_f4"`` of the numpy backend) against the float64 plain reference.

Error bounds (‖out − ref‖ / ‖ref‖, float32 inputs, ref in float64): the direct paths are held
to 1e-5; Winograd's transforms add terms of growing size (the points ±2 scale by up to 2^4
in F(4x4,3x3)), so each variant gets its own bound, about 5x the worst error measured on
AlexNet-like channel counts (C = 64..384: F(2x2,3x3) 3.5e-7, F(2x2,5x5) 1.5e-6,
F(4x4,3x3) 2.3e-6). dW is Winograd too (F(r x r, 2x2) for winograd_f2, F(3x3, 4x4) for
winograd_f4; measured 1.6e-7..2.5e-6) and held to 1e-5:
"""
import zlib

import numpy as np
import pytest

from gpucnn.backends.numpy_backend import NumpyBackend
from gpucnn.ops.conv import algos, conv_geometry, direct, winograd
from gpucnn.ops.conv import reference as conv_ref
from gpucnn.testing import rel_error

BOUND = {("winograd_f2", 3): 2e-6, ("winograd_f2", 5): 1e-5, ("winograd_f4", 3): 1e-5}
# (N, C, H, W), F, k, padding: partial border tiles, padding 0..2, rectangles, 'same'
CASES = {
    "k3_pad1_7x7": ((3, 16, 7, 7), 8, 3, 1),
    "k3_pad0_rect": ((2, 5, 9, 6), 4, 3, 0),
    "k3_pad2": ((2, 3, 5, 8), 5, 3, 2),
    "k3_same_1x1_input": ((2, 4, 1, 1), 3, 3, "same"),
    "k3_channels_64": ((2, 64, 13, 13), 24, 3, 1),
    "k5_pad2_15x15": ((2, 12, 15, 15), 6, 5, 2),
    "k5_pad0_odd": ((3, 2, 11, 9), 3, 5, 0),
    "k5_same_2x3": ((1, 3, 2, 3), 2, 5, "same"),
}


def _cases():
    for name, (m, sizes) in winograd.VARIANTS.items():
        for case, spec in CASES.items():
            if spec[2] in sizes:
                yield pytest.param(name, spec, id=f"{name}-{case}")


@pytest.mark.parametrize("m,r", [(2, 3), (4, 3), (2, 5)])
def test_transforms_compute_the_correlation_exactly(m, r):
    """1-D: AT ((G g) * (BT d)) is the correlation of d with g, to float64 rounding; B^T
    and A^T are integer (exact on the data)."""
    AT, G, BT = winograd.transforms(m, r)
    rng = np.random.default_rng(m * 10 + r)
    for _ in range(5):
        d, g = rng.standard_normal(m + r - 1), rng.standard_normal(r)
        np.testing.assert_allclose(AT @ ((G @ g) * (BT @ d)), np.correlate(d, g, "valid"),
                                   rtol=0, atol=1e-13)
    assert np.array_equal(BT, np.round(BT)) and np.array_equal(AT, np.round(AT))


@pytest.mark.parametrize("algo,spec", list(_cases()))
@pytest.mark.parametrize("relu", [False, True])
def test_forward_matches_reference(algo, spec, relu):
    x_shape, F, k, padding = spec
    rng = np.random.default_rng(zlib.crc32(repr((algo, spec, relu)).encode()))
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal((F, x_shape[1], k, k)) / np.sqrt(x_shape[1] * k * k)
    b = rng.standard_normal(F)
    g = conv_geometry(x.shape, w.shape, 1, padding)
    ref = conv_ref.conv2d(x, w, b, g, relu)
    B = NumpyBackend(threads=2)
    f32 = [a.astype(np.float32) for a in (x, w, b)]
    first = B.conv2d(*f32, padding=padding, relu=relu, algo=algo)
    first.fill(np.nan)  # poisoned: a recycled output block must be written everywhere
    del first
    y = B.conv2d(*f32, padding=padding, relu=relu, algo=algo)
    assert y.dtype == np.float32 and y.shape == ref.shape
    assert rel_error(y, ref) < BOUND[algo, k], algo
    # float64 inputs are computed in float64
    y64 = B.conv2d(x, w, b, padding=padding, relu=relu, algo=algo)
    assert y64.dtype == np.float64 and rel_error(y64, ref) < 1e-12


@pytest.mark.parametrize("algo,spec", list(_cases()))
@pytest.mark.parametrize("need", [(True, True), (True, False), (False, True)])
def test_backward_matches_reference(algo, spec, need):
    x_shape, F, k, padding = spec
    rng = np.random.default_rng(zlib.crc32(repr((algo, spec, need)).encode()))
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal((F, x_shape[1], k, k)) / np.sqrt(x_shape[1] * k * k)
    g = conv_geometry(x.shape, w.shape, 1, padding)
    dy = rng.standard_normal(g.y_shape)
    rdx, rdw, rdb = conv_ref.conv2d_backward(dy, x, w, g)
    B = NumpyBackend(threads=2)
    dx, dw, db = B.conv2d_backward(*(a.astype(np.float32) for a in (dy, x, w)),
                                   padding=padding, need_dx=need[0], need_dw=need[1],
                                   algo=algo)
    if need[0]:
        assert dx.shape == x.shape and rel_error(dx, rdx) < BOUND[algo, k]
    else:
        assert dx is None
    if need[1]:
        assert rel_error(dw, rdw) < 1e-5 and rel_error(db, rdb) < 1e-5
    else:
        assert dw is None and db is None


def test_registered_and_checked():
    """Selectable by name on the numpy backend (auto picks F(4x4, 3x3) only for layers with
    >= 64 channels each way and >= 256 tiles: tests/ops/test_conv_implicit.py's table), and a
    layer it cannot run is a clear error naming what it needs."""
    B = NumpyBackend()
    assert {"winograd_f2", "winograd_f4"} <= set(algos.names("cpu"))
    x = np.ones((1, 2, 6, 6), np.float32)
    with pytest.raises(ValueError, match=r"winograd_f4.*3x3 kernel"):
        B.conv2d(x, np.ones((2, 2, 5, 5), np.float32), padding=2, algo="winograd_f4")
    with pytest.raises(ValueError, match=r"winograd_f2.*stride 1"):
        B.conv2d(x, np.ones((2, 2, 3, 3), np.float32), stride=2, algo="winograd_f2")
    B.conv2d(x, np.ones((2, 2, 3, 3), np.float32), padding=1)
    # 2 channels: not Winograd (direct where it can be built, else wide)
    assert set(B.conv_algorithms().values()) == {"direct" if direct.available() else "wide"}


def test_auto_runs_winograd_where_preferred():
    """A layer auto gives to winograd_f4 runs it (forward and backward recorded) and matches
    the reference to its bound."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((64, 64, 6, 6))  # 64 images x 4 tiles
    w = rng.standard_normal((64, 64, 3, 3)) / 24
    g = conv_geometry(x.shape, w.shape, 1, 1)
    B = NumpyBackend(threads=2)
    y = B.conv2d(x.astype(np.float32), w.astype(np.float32), padding=1)
    dy = rng.standard_normal(y.shape)
    dx, dw, _ = B.conv2d_backward(dy.astype(np.float32), x.astype(np.float32),
                                  w.astype(np.float32), padding=1)
    assert set(B.conv_algorithms().values()) == {"winograd_f4"}
    assert rel_error(y, conv_ref.conv2d(x, w, None, g, False)) < BOUND["winograd_f4", 3]
    rdx, rdw, _ = conv_ref.conv2d_backward(dy, x, w, g)
    assert rel_error(dx, rdx) < BOUND["winograd_f4", 3] and rel_error(dw, rdw) < 1e-5


def test_workspace_is_bounded_by_the_block():
    """The workspace of a layer stops growing with the batch past one block of images."""
    ws = winograd.workspace_bytes("winograd_f4")
    g = lambda n: conv_geometry((n, 64, 13, 13), (32, 64, 3, 3), 1, 1)  # noqa: E731
    assert ws(g(8), 0) < ws(g(64), 0) == ws(g(512), 0)


@pytest.mark.parametrize("algo", list(winograd.VARIANTS))
def test_weight_gradient_blocks_follow_the_workspace_bound(algo):
    """dW's image blocks shrink to fit GPUCNN_WORKSPACE_MB (down to one image): the same
    gradient, to the variant's bound."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((5, 8, 7, 7))
    w = rng.standard_normal((6, 8, 3, 3)) / 8
    g = conv_geometry(x.shape, w.shape, 1, 1)
    dy = rng.standard_normal(g.y_shape)
    _, rdw, rdb = conv_ref.conv2d_backward(dy, x, w, g)
    for ws in (1, 10 ** 8):
        B = NumpyBackend(threads=2, workspace_bytes=ws)
        _, dw, db = B.conv2d_backward(*(a.astype(np.float32) for a in (dy, x, w)), padding=1,
                                      need_dx=False, algo=algo)
        assert rel_error(dw, rdw) < BOUND[algo, 3] and rel_error(db, rdb) < 1e-5
