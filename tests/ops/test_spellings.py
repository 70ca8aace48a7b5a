"""PyTorch's argument spellings (gpucnn/ops/common.py ``pair``, ``pool_geometry``,
``conv_geometry``): a one-element tuple means "the same for both axes" for the pools'
kernel_size, stride, padding, dilation and conv's stride, padding, dilation; a pool's
``stride=()`` means "the kernel size", like None. Each spelling must give exactly what the
two-element spelling gives, on the CPU, the reference and the device kernels, and what
PyTorch gives; other lengths are a clear error naming the argument. (Kept apart from
test_pool.py, which is past the 500-line limit already.)"""
import re

import numpy as np
import pytest

from gpucnn.testing import assert_close, f64, randn

# (our call with the short spellings, the same call spelled with pairs, PyTorch's call)
POOL_CALLS = {
    "max": (lambda B, x: B.max_pool2d(x, (3,), (2,), (1,), dilation=(2,)),
            lambda B, x: B.max_pool2d(x, (3, 3), (2, 2), (1, 1), dilation=(2, 2)),
            lambda F, x: F.max_pool2d(x, (3,), (2,), (1,), dilation=(2,))),
    "max_default_stride": (lambda B, x: B.max_pool2d(x, 2, ()),
                           lambda B, x: B.max_pool2d(x, (2, 2), (2, 2)),
                           lambda F, x: F.max_pool2d(x, 2, ())),
    "avg": (lambda B, x: B.avg_pool2d(x, (3,), (), padding=(1,)),
            lambda B, x: B.avg_pool2d(x, (3, 3), (3, 3), padding=(1, 1)),
            lambda F, x: F.avg_pool2d(x, (3,), (), padding=(1,))),
    "lp": (lambda B, x: B.lp_pool2d(x, 2, (2,), ()),
           lambda B, x: B.lp_pool2d(x, 2, (2, 2), (2, 2)),
           lambda F, x: F.lp_pool2d(x, 2, 2, ())),  # torch unpacks kernel_size itself: no (2,)
}

CONV_SHORT = dict(stride=(2,), padding=(1,), dilation=(2,))
CONV_PAIRS = dict(stride=(2, 2), padding=(1, 1), dilation=(2, 2))


def _parts(result):
    return result if isinstance(result, tuple) else (result,)  # max-pool: (y, switches)


@pytest.mark.parametrize("op", POOL_CALLS)
def test_pool_spellings_equal_the_pairs(numpy_backend, reference_backend, device_forward, rng,
                                        op):
    short, pairs, _ = POOL_CALLS[op]
    x = np.abs(randn(rng, 2, 3, 9, 8)) + np.float32(0.5)  # positive: LP's root is defined
    for B in (numpy_backend, reference_backend):
        for a, b in zip(_parts(short(B, x)), _parts(pairs(B, x)), strict=True):
            np.testing.assert_array_equal(a, b)
    D, xd = device_forward, device_forward.asarray(x)
    for a, b in zip(_parts(short(D, xd)), _parts(pairs(D, xd)), strict=True):
        np.testing.assert_array_equal(D.to_numpy(a), D.to_numpy(b))


@pytest.mark.parametrize("op", POOL_CALLS)
def test_pool_spellings_match_torch(reference_backend, rng, op):
    torch = pytest.importorskip("torch", reason="torch is not installed: the PyTorch parity "
                                "check of the spellings needs it")
    short, _, theirs = POOL_CALLS[op]
    x = np.abs(rng.standard_normal((2, 3, 9, 8))) + 0.5
    want = theirs(torch.nn.functional, torch.from_numpy(x)).numpy()
    assert_close(_parts(short(reference_backend, x))[0], want, 1e-12, f"{op} vs torch")


def test_pool_backward_takes_the_short_spellings(numpy_backend, rng):
    B, x = numpy_backend, randn(rng, 2, 3, 9, 8)
    y, sw = B.max_pool2d(x, (3,), (2,), (1,), dilation=(2,))
    dy = randn(rng, *y.shape)
    np.testing.assert_array_equal(
        B.max_pool2d_backward(dy, sw, x.shape, (3,), (2,), (1,), dilation=(2,)),
        B.max_pool2d_backward(dy, sw, x.shape, 3, 2, 1, dilation=2))
    dy = randn(rng, *B.avg_pool2d(x, 3, padding=1).shape)
    np.testing.assert_array_equal(B.avg_pool2d_backward(dy, x.shape, (3,), (), (1,)),
                                  B.avg_pool2d_backward(dy, x.shape, 3, 3, 1))


def test_conv_spellings_equal_the_pairs(numpy_backend, reference_backend, device_forward, rng):
    x, w, b = randn(rng, 2, 3, 11, 10), randn(rng, 4, 3, 3, 3), randn(rng, 4)
    for B in (numpy_backend, reference_backend):
        y = B.conv2d(x, w, b, **CONV_SHORT)
        np.testing.assert_array_equal(y, B.conv2d(x, w, b, **CONV_PAIRS))
        dy = randn(rng, *y.shape)
        for u, v in zip(B.conv2d_backward(dy, x, w, **CONV_SHORT),
                        B.conv2d_backward(dy, x, w, **CONV_PAIRS)):
            np.testing.assert_array_equal(u, v)
    D = device_forward
    got = D.conv2d(*(D.asarray(a) for a in (x, w, b)), **CONV_SHORT)
    want = D.conv2d(*(D.asarray(a) for a in (x, w, b)), **CONV_PAIRS)
    np.testing.assert_array_equal(D.to_numpy(got), D.to_numpy(want))


def test_fused_conv_pool_takes_the_short_spellings(numpy_backend, rng):
    B = numpy_backend
    x, w, b = randn(rng, 2, 3, 8, 8), randn(rng, 4, 3, 3, 3), randn(rng, 4)
    short = B.conv2d_relu_maxpool(x, w, b, stride=(1,), padding=(1,), kernel_size=(2,),
                                  pool_stride=())
    pairs = B.conv2d_relu_maxpool(x, w, b, stride=1, padding=1, kernel_size=2, pool_stride=2)
    for u, v in zip(short, pairs):
        np.testing.assert_array_equal(u, v)


def test_conv_spellings_match_torch(reference_backend, rng):
    torch = pytest.importorskip("torch", reason="torch is not installed: the PyTorch parity "
                                "check of the spellings needs it")
    x, w, b = f64(randn(rng, 2, 3, 11, 10), randn(rng, 4, 3, 3, 3), randn(rng, 4))
    want = torch.nn.functional.conv2d(*map(torch.from_numpy, (x, w, b)), **CONV_SHORT)
    assert_close(reference_backend.conv2d(x, w, b, **CONV_SHORT), want.numpy(), 1e-12,
                 "conv2d vs torch")


BAD_LENGTH = "must be an int or a pair of ints .*got "


@pytest.mark.parametrize("name", ["stride", "padding", "dilation"])
@pytest.mark.parametrize("value", [(), (1, 1, 1), [2, 2, 2]])
def test_conv_rejects_other_lengths(numpy_backend, rng, name, value):
    x, w = randn(rng, 1, 2, 6, 6), randn(rng, 3, 2, 3, 3)
    with pytest.raises(TypeError, match=f"{name} {BAD_LENGTH}{re.escape(repr(value))}"):
        numpy_backend.conv2d(x, w, **{name: value})


@pytest.mark.parametrize("name", ["kernel_size", "stride", "padding", "dilation"])
def test_pools_reject_other_lengths(numpy_backend, rng, name):
    x = randn(rng, 1, 2, 8, 8)
    args = dict(kernel_size=3, stride=2, padding=1, dilation=1)
    args[name] = (1, 1, 1)
    with pytest.raises(TypeError, match=rf"{name} {BAD_LENGTH}\(1, 1, 1\)"):
        numpy_backend.max_pool2d(x, **args)
    if name != "stride":  # () is the default stride; anywhere else it is an error
        args[name] = ()
        with pytest.raises(TypeError, match=rf"{name} {BAD_LENGTH}\(\)"):
            numpy_backend.max_pool2d(x, **args)


def test_pool_layers_take_the_short_spellings(numpy_backend, rng):
    """nn.MaxPool2d / nn.AvgPool2d map stride=() and one-element tuples as the ops do."""
    from gpucnn import nn
    x = numpy_backend.asarray(rng.standard_normal((2, 3, 9, 9)).astype(np.float32))
    for cls in (nn.MaxPool2d, nn.AvgPool2d):
        short = cls((3,), stride=(), padding=(1,)).bind(numpy_backend)
        pairs = cls((3, 3), stride=(3, 3), padding=(1, 1)).bind(numpy_backend)
        assert short.stride == (3, 3)
        np.testing.assert_array_equal(short(x), pairs(x))
