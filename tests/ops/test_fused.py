"""The fused conv + ReLU + max-pool (gpucnn/ops/conv/wide_fused.py, run by the numpy backend's
``conv2d_relu_maxpool``): against the composed default of ``Backend`` (conv2d(relu=True),
max_pool2d and their backwards) on the same backend, and against the reference backend in
float64, with ties (few distinct values, flat regions), both dtypes and several geometries;
plus finite differences through the fused op and the layer graph's use of it."""
import numpy as np
import pytest

from gpucnn.backends.base import Backend
from gpucnn.backends.numpy_backend import NumpyBackend
from gpucnn.nn import AvgPool2d, Conv2d, Flatten, Linear, LPPool2d, MaxPool2d, ReLU, Sequential
from gpucnn.ops.pool import pool_geometry
from gpucnn.summary import summarize
from gpucnn.testing import check_gradient_entries, f64, rel_error

# (N, C, H, W, F, k, conv stride, conv padding, pool kernel, pool stride, pool padding)
GEOMS = [
    (8, 1, 28, 28, 6, 5, 1, 2, 2, None, 0),   # LeNet conv1 (fast paths)
    (8, 6, 14, 14, 16, 5, 1, 0, 2, None, 0),  # LeNet conv2 (fast paths)
    (5, 3, 11, 9, 4, 3, 1, 1, 3, 2, 0),       # overlapping pool windows
    (4, 2, 10, 10, 3, 3, 1, 1, (2, 3), None, 0),  # rectangular pool, ragged edge
    (3, 2, 9, 9, 4, 3, 1, 1, 3, 2, 1),        # padded pool (general path)
    (3, 4, 12, 12, 4, 3, 2, 1, 2, None, 0),   # strided conv (general conv path)
    (6, 2, 8, 8, 4, 3, 1, 0, 1, None, 0),     # 1x1 pool
]

B = NumpyBackend()


def inputs(rng, geom, dtype, flat):
    """Small integers and quarter weights: every conv output is exact in both dtypes, so the
    fused and composed paths must agree bit for bit, ties included."""
    N, C, H, W, F, k = geom[:6]
    x = np.round(rng.standard_normal((N, C, H, W)) * 1.5)
    if flat:  # constant regions, as on Fashion-MNIST's backgrounds
        x[:, :, : H // 2] = 0
        x[:, :, :, -3:] = 1
    w = np.round(rng.standard_normal((F, C, k, k)) * 2) / 4
    b = np.round(rng.standard_normal(F))
    return x.astype(dtype), w.astype(dtype), b.astype(dtype)


def conv_kw(geom):
    return dict(stride=geom[6], padding=geom[7])


def fused_kw(geom):
    return dict(conv_kw(geom), kernel_size=geom[8], pool_stride=geom[9],
                pool_padding=geom[10])


def assert_grads_close(got, ref, dtype):
    rtol, atol = (1e-6, 1e-5) if dtype == np.float32 else (1e-13, 1e-12)
    for u, v in zip(got, ref):
        if v is None:
            assert u is None
        else:
            assert u.dtype == v.dtype
            np.testing.assert_allclose(u, v, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geom", GEOMS)
@pytest.mark.parametrize("flat", [False, True])
def test_fused_matches_composed(rng, geom, dtype, flat):
    x, w, b = inputs(rng, geom, dtype, flat)
    kw = fused_kw(geom)
    y, sw = B.conv2d_relu_maxpool(x, w, b, **kw)
    y0, sw0 = Backend.conv2d_relu_maxpool(B, x, w, b, **kw)
    assert y.dtype == dtype and sw.dtype == np.int32
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(sw, sw0)
    # ...and the composed default is literally the three public ops
    a = B.conv2d(x, w, b, **conv_kw(geom), relu=True)
    y1, sw1 = B.max_pool2d(a, geom[8], geom[9], geom[10])
    np.testing.assert_array_equal(y, y1)
    np.testing.assert_array_equal(sw, sw1)
    dy = np.round(rng.standard_normal(y.shape) * 4).astype(dtype)
    for need_dx in (True, False):
        got = B.conv2d_relu_maxpool_backward(dy, sw, y, x, w, **kw, need_dx=need_dx)
        ref = Backend.conv2d_relu_maxpool_backward(B, dy, sw, y, x, w, **kw, need_dx=need_dx)
        assert_grads_close(got, ref, dtype)
    # the composed backward against the unfused sequence on the full conv output
    d = B.max_pool2d_backward(dy, sw1, a.shape, geom[8], geom[9], geom[10])
    d = B.relu_backward(d, a)
    ref = B.conv2d_backward(d, x, w, **conv_kw(geom))
    assert_grads_close(B.conv2d_relu_maxpool_backward(dy, sw, y, x, w, **kw), ref, dtype)


@pytest.mark.parametrize("geom", GEOMS)
def test_fused_matches_reference(reference_backend, rng, geom):
    """The fast path against the plain definitions (float64; exact inputs: exact results)."""
    x, w, b = inputs(rng, geom, np.float64, True)
    kw = fused_kw(geom)
    y, sw = B.conv2d_relu_maxpool(x, w, b, **kw)
    y_ref, sw_ref = reference_backend.conv2d_relu_maxpool(x, w, b, **kw)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(sw, sw_ref)
    dy = rng.standard_normal(y.shape)
    assert_grads_close(B.conv2d_relu_maxpool_backward(dy, sw, y, x, w, **kw),
                       reference_backend.conv2d_relu_maxpool_backward(dy, sw_ref, y_ref, x, w,
                                                                      **kw), np.float64)


def test_fused_fast_path_geometry():
    """LeNet's pools are plain (the fast path); a padded pool is not (the composed path)."""
    assert pool_geometry((8, 6, 28, 28), 2).plain
    assert pool_geometry((8, 16, 10, 10), 2).plain
    assert not pool_geometry((3, 4, 9, 9), 3, 2, 1).plain


def test_fused_all_ties_and_nan(rng, reference_backend):
    x = np.zeros((2, 2, 8, 8), np.float32)  # every window a tie (all zero after ReLU)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    b = np.array([-1, 0, 1], np.float32)
    for _ in range(2):
        y, sw = B.conv2d_relu_maxpool(x, w, b, padding=1, kernel_size=2)
        y0, sw0 = Backend.conv2d_relu_maxpool(B, x, w, b, padding=1, kernel_size=2)
        np.testing.assert_array_equal(y, y0)
        np.testing.assert_array_equal(sw, sw0)
        x[0, 0, 3, 3] = np.nan  # second round: a NaN takes the general pool
    # The NaN survives ReLU and wins every pool window its 3x3 conv footprint reaches
    # (PyTorch's rule), with the switch at the last NaN of the window.
    R = reference_backend
    y_ref, sw_ref = R.conv2d_relu_maxpool(*f64(x, w, b), padding=1, kernel_size=2)
    np.testing.assert_array_equal(y, y_ref.astype(np.float32))
    np.testing.assert_array_equal(sw, sw_ref)
    assert np.isnan(y[0, :, 1:3, 1:3]).all() and not np.isnan(y[0, :, 0]).any()
    assert not np.isnan(y[1]).any()
    # conv outputs (2..4, 2..4) are NaN: the last one of each window is its switch (h * 8 + w)
    assert (sw[0, :, 1:3, 1:3] == [[27, 28], [35, 36]]).all()


def test_fused_backward_checks_arguments(rng):
    x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    w = rng.standard_normal((2, 1, 3, 3)).astype(np.float32)
    y, sw = B.conv2d_relu_maxpool(x, w, None, padding=1, kernel_size=2)
    with pytest.raises(ValueError, match="dy must have shape"):
        B.conv2d_relu_maxpool_backward(y[:, :, :2], sw, y, x, w, padding=1, kernel_size=2)
    bad = sw.copy()
    bad[0, 0, 0, 0] = 64
    with pytest.raises(ValueError, match="switches must lie in"):
        B.conv2d_relu_maxpool_backward(y, bad, y, x, w, padding=1, kernel_size=2)


@pytest.mark.parametrize("geom", [GEOMS[0], GEOMS[2], GEOMS[3], GEOMS[4]])
def test_fused_finite_differences(rng, geom):
    x, w, b = (a + 0.01 * rng.standard_normal(a.shape)  # break ties for differentiability
               for a in inputs(rng, geom, np.float64, False))
    x, w = x[:2].copy(), w.copy()
    kw = fused_kw(geom)
    y, sw = B.conv2d_relu_maxpool(x, w, b, **kw)
    r = rng.standard_normal(y.shape)
    dx, dw, db = B.conv2d_relu_maxpool_backward(r, sw, y, x, w, **kw)

    def f():
        return float((B.conv2d_relu_maxpool(x, w, b, **kw)[0] * r).sum())

    for arr, grad in ((x, dx), (w, dw), (b, db)):
        check_gradient_entries(f, arr, grad, rng.choice(arr.size, min(arr.size, 15),
                                                         replace=False), 1e-6)


def test_sequential_fuses_conv_relu_pool_and_keeps_summary():
    def layers():
        return [Conv2d(1, 4, 3, padding=1), ReLU(), MaxPool2d(2),
                Conv2d(4, 4, 3), ReLU(), Flatten(), Linear(4 * 3 * 3, 3)]

    a = Sequential(*layers()).bind("numpy", np.random.default_rng(0))
    b = Sequential(*layers()).bind("numpy", np.random.default_rng(0))
    assert a.layers[0].fused_pool is a.layers[2] and a.layers[2].fused_into is a.layers[0]
    assert a.layers[3].fused_pool is None  # no pool after the second ReLU
    b.layers[0].fused_pool = b.layers[2].fused_into = None
    numbers = lambda rows: [{k: v for k, v in r.items() if k != "layer"} for r in rows]  # noqa
    assert numbers(summarize(a, (1, 10, 10))) == numbers(summarize(b, (1, 10, 10)))
    assert "[fused into the conv]" in repr(a) and "[fused into the conv]" not in repr(b)
    x = np.random.default_rng(1).standard_normal((3, 1, 10, 10)).astype(np.float32)
    np.testing.assert_allclose(a.forward(x), b.forward(x), rtol=1e-6, atol=1e-6)
    dy = np.random.default_rng(2).standard_normal((3, 3)).astype(np.float32)
    a.backward(dy)
    b.backward(dy)
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pool", [lambda: MaxPool2d(2, ceil_mode=True),
                                  lambda: MaxPool2d(2, dilation=2),
                                  lambda: AvgPool2d(2), lambda: LPPool2d(2, 2)])
def test_sequential_fuses_only_pools_the_fused_op_takes(reference_backend, rng, pool):
    """conv2d_relu_maxpool takes kernel, stride and padding: any other pool (option) runs as
    its own layer, with its options applied."""
    net = Sequential(Conv2d(1, 3, 3), ReLU(), pool()).bind("numpy", rng)
    conv, _, p = net.layers
    assert conv.fused_pool is None and p.fused_into is None and conv.fused_relu
    x = rng.standard_normal((2, 1, 9, 9)).astype(np.float32)
    a = reference_backend.conv2d(*f64(x, conv.weight.data, conv.bias.data), relu=True)
    ref = Sequential(pool()).bind("reference", rng).forward(a)
    np.testing.assert_allclose(net.forward(x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opts", [dict(threads=1), dict(threads=2, workspace_bytes=200_000),
                                  dict(threads=2, cache_cols=False)])
def test_fused_backend_options(rng, opts):
    """Batch slices (a small workspace), one thread, no column cache: the same results."""
    Bo = NumpyBackend(**opts)
    for geom in GEOMS[:2]:
        x, w, b = inputs(rng, (16,) + geom[1:], np.float32, True)
        kw = fused_kw(geom)
        y, sw = Bo.conv2d_relu_maxpool(x, w, b, **kw)
        y0, sw0 = Backend.conv2d_relu_maxpool(B, x, w, b, **kw)
        np.testing.assert_array_equal(y, y0)
        np.testing.assert_array_equal(sw, sw0)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        got = Bo.conv2d_relu_maxpool_backward(dy, sw, y, x, w, **kw)
        ref = Backend.conv2d_relu_maxpool_backward(B, dy, sw, y, x, w, **kw)
        for u, v in zip(got, ref):  # sums over the batch split by thread count: rounding
            assert rel_error(u, v) < 1e-6


@pytest.mark.parametrize("kernel,dilation", [(4, 1), (3, 2), ((2, 3), 1)])
def test_fused_same_padding_on_every_backend(reference_backend, device_forward, rng, kernel,
                                             dilation):
    """Conv2d(padding='same') with an even (asymmetrically padded) or dilated kernel, fused
    with ReLU + max-pool: numpy (fast or general path) and emu equal the float64 reference
    in outputs and gradients (the composed fallback rebuilds the conv from its geometry)."""
    def net(backend):
        return Sequential(Conv2d(2, 4, kernel, padding="same", dilation=dilation), ReLU(),
                          MaxPool2d(2), Flatten(), Linear(4 * 4 * 4, 3)).bind(
            backend, np.random.default_rng(5))
    x = rng.standard_normal((3, 2, 8, 8))
    dy = rng.standard_normal((3, 3))
    ref = net("reference")
    for layer in ref.layers:  # the reference in float64, same weights
        for p in layer.parameters():
            p.data = p.data.astype(np.float64)
    y_ref = ref.forward(x)
    ref.backward(dy)
    for other in (net("numpy"), net(device_forward)):
        B = other.backend
        assert other.layers[0].fused_pool is other.layers[2]
        y = B.to_numpy(other.forward(B.asarray(x)))
        np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-5)
        other.backward(B.asarray(dy))
        for p, q in zip(other.parameters(), ref.parameters()):
            np.testing.assert_allclose(B.to_numpy(p.grad), q.grad, rtol=1e-4, atol=1e-5)
