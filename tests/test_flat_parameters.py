"""Parameters, gradients and optimiser state as views into flat buffers (gpucnn/nn/flat.py):
one update launch per step, results bit-identical to one update per parameter."""
import numpy as np
import pytest

from gpucnn.backends.null import make_null_backend
from gpucnn.models import lenet5
from gpucnn.nn import SoftmaxCrossEntropy
from gpucnn.optim import SGD, Adam


def _step(model, opt, x, y):
    B = model.backend
    loss = SoftmaxCrossEntropy().bind(B)
    loss.forward(model.forward(x), y)
    model.backward(loss.backward())
    opt.step()


def _data(B, rng, n=8):
    return (B.asarray(rng.standard_normal((n, 1, 28, 28)).astype(np.float32)),
            B.asarray(rng.integers(0, 10, n).astype(np.int32), dtype=np.int32))


def test_parameters_and_gradients_are_views_of_one_buffer(rng):
    model = lenet5(backend="numpy", seed=1)
    flat, params = model.flat, model.parameters()
    assert flat is not None and flat.size == sum(p.size for p in params)
    for p in params:
        assert p.data is p.data_view and p.data.flags.c_contiguous
        assert np.shares_memory(p.data, flat.data) and p.grad is None
    opt = SGD(params, 0.05, 0.9, backend=model.backend)
    _step(model, opt, *_data(model.backend, rng))
    assert all(p.grad is p.grad_view and np.shares_memory(p.grad, flat.grad) for p in params)
    assert opt.flat is flat and all(np.shares_memory(v, opt.flat_state["velocity"])
                                    for v in opt.state["velocity"])


@pytest.mark.parametrize("make_opt", [lambda ps, B: SGD(ps, 0.05, 0.9, nesterov=True,
                                                         weight_decay=1e-3, backend=B),
                                      lambda ps, B: Adam(ps, 1e-3, weight_decay=1e-3,
                                                         backend=B)], ids=["sgd", "adam"])
def test_one_update_over_the_buffers_equals_one_per_parameter(rng, make_opt):
    """The same bits: the update is elementwise, the same arithmetic per element."""
    flat_model, plain_model = lenet5(backend="numpy", seed=4), lenet5(backend="numpy", seed=4)
    for p in plain_model.parameters():  # no longer the buffer's views: per-parameter updates
        p.data = p.data.copy()
    B = flat_model.backend
    opts = [make_opt(m.parameters(), B) for m in (flat_model, plain_model)]
    for _ in range(3):
        x, y = _data(B, rng)
        for m, opt in zip((flat_model, plain_model), opts):
            _step(m, opt, x, y)
    assert opts[0].flat is not None and not opts[0].flat.intact(plain_model.parameters())
    for a, b in zip(flat_model.parameters(), plain_model.parameters()):
        np.testing.assert_array_equal(a.data, b.data)


def test_one_update_launch_per_step_on_the_device(rng):
    """On the cuda code path (null device) the optimiser launches once, not per parameter;
    a parameter replaced by another array makes it fall back to one launch each."""
    B = make_null_backend()
    model = lenet5(backend=B, seed=0)
    opt = SGD(model.parameters(), 0.05, 0.9, backend=B)
    x, y = _data(B, rng)
    _step(model, opt, x, y)  # plans made
    before = B.module.launches
    opt.step()
    assert B.module.launches - before == 1
    model.parameters()[0].data = B.asarray(np.zeros(model.parameters()[0].shape, np.float32))
    _step(model, opt, x, y)
    before = B.module.launches
    opt.step()
    assert B.module.launches - before == len(model.parameters())


def test_loading_keeps_the_views(rng):
    src, dst = lenet5(backend="numpy", seed=2), lenet5(backend="numpy", seed=3)
    dst.load_state_dict(src.state_dict())
    for a, b in zip(src.parameters(), dst.parameters()):
        assert b.data is b.data_view
        np.testing.assert_array_equal(a.data, b.data)
    opt = SGD(dst.parameters(), 0.05, 0.9, backend=dst.backend)
    _step(dst, opt, *_data(dst.backend, rng))
    arrays, meta = opt.state_dict(dst.backend)
    fresh = SGD(dst.parameters(), 0.05, 0.9, backend=dst.backend)
    fresh.load_state_dict(dst.backend, arrays, meta)
    for v, w in zip(fresh.state["velocity"], opt.state["velocity"]):
        assert np.shares_memory(v, fresh.flat_state["velocity"])
        np.testing.assert_array_equal(v, w)


def test_parameters_of_mixed_dtypes_keep_their_own_arrays():
    from gpucnn.nn import FlatParameters, Parameter
    B = make_null_backend()
    ps = [Parameter(np.ones(3, np.float32)), Parameter(np.ones(2, np.float64))]
    assert FlatParameters.of(B, ps) is None and FlatParameters.of(B, []) is None
