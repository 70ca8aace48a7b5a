"""Layer graph: whole-network gradients, fusion, shapes, modes, optimisers, bad input."""
import numpy as np
import pytest

from gpucnn.backends.numpy_backend import NumpyBackend
from gpucnn.models import alexnet, alexnet_cifar, build_model, lenet5
from gpucnn.nn import (AvgPool2d, Conv2d, Dropout, Flatten, Linear, LocalResponseNorm,
                       MaxPool2d, ReLU, Sequential, SoftmaxCrossEntropy)
from gpucnn.optim import SGD, Adam, CosineLR, StepLR
from gpucnn.summary import summarize
from gpucnn.testing import check_gradient_entries, rel_error


class Float64Backend(NumpyBackend):
    """The reference backend with parameters kept in float64, for finite differences."""

    def asarray(self, a, dtype=None):
        a = np.asarray(a)
        return np.ascontiguousarray(a, dtype=dtype or (
            np.int32 if np.issubdtype(a.dtype, np.integer) else np.float64))


def _net_grad_check(net, x, labels, eps=1e-6):
    B = net.backend
    lossf = SoftmaxCrossEntropy().bind(B)
    lossf.forward(net.forward(x), labels)
    dx = net.backward(lossf.backward())
    analytic = [p.grad.copy() for p in net.parameters()]

    def loss():
        return float(lossf.forward(net.forward(x), labels))

    for p, g in zip(net.parameters(), analytic):
        idx = np.random.default_rng(0).choice(p.size, min(p.size, 12), replace=False)
        check_gradient_entries(loss, p.data, g, idx, eps)
    return dx


@pytest.mark.parametrize("fuse", [True, False])
def test_small_net_gradients_match_finite_differences(fuse):
    B = Float64Backend()
    layers = [Conv2d(2, 4, 3, padding=1), ReLU(), MaxPool2d(3, 2),
              Conv2d(4, 4, 3, stride=2, padding=1, groups=2), ReLU(),
              LocalResponseNorm(3, 0.1, 0.75, 2.0), AvgPool2d(2),
              Flatten(), Linear(4, 6), ReLU(), Dropout(0.3), Linear(6, 3, init="glorot")]
    if not fuse:  # break fusion by wrapping ReLUs' producers
        for l in layers:
            l.can_fuse_relu = False
    net = Sequential(*layers).bind(B, np.random.default_rng(1))
    assert all(l.fused_relu == fuse for l in layers if isinstance(l, (Conv2d, Linear))
               and l is not layers[-1])
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 2, 9, 9))
    labels = np.array([0, 2, 1], dtype=np.int32)
    # Dropout draws a new mask per forward; freeze its counter for the numerical check.
    drop = layers[10]
    drop.forward = (lambda f: (lambda x: (setattr(drop, "calls", 0), f(x))[1]))(drop.forward)
    _net_grad_check(net, x, labels)


def test_fused_relu_equals_unfused():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 1, 28, 28)).astype(np.float32)
    a = lenet5(backend="numpy", seed=5)
    b = lenet5(backend="numpy", seed=5)
    for layer in b.layers:
        layer.fused_relu = False
        if isinstance(layer, Conv2d):
            layer.fused_pool = None
        layer.fused_into = None
    assert [isinstance(l.fused_pool, MaxPool2d) for l in a.layers if isinstance(l, Conv2d)] \
        == [True, True]
    np.testing.assert_allclose(a.forward(x), b.forward(x), rtol=1e-6, atol=1e-6)


def test_model_shapes_and_summary():
    net = alexnet(backend="numpy")
    rows = summarize(net)
    assert rows[0]["output_shape"] == [96, 55, 55] and rows[0]["params"] == 34944
    assert net.output_shape((3, 227, 227)) == (1000,)
    assert alexnet(towers=True, lrn=False, backend="numpy").output_shape((3, 227, 227)) == (1000,)
    assert alexnet_cifar(backend="numpy").output_shape((3, 32, 32)) == (10,)
    assert sum(r["params"] for r in summarize(lenet5(backend="numpy"))) == 61706
    with pytest.raises(ValueError, match="model must be one of"):
        build_model("resnet")


def test_bad_input_gives_clear_errors():
    B = NumpyBackend()
    with pytest.raises(ValueError, match="output height would be"):
        Conv2d(3, 8, 7).output_shape((3, 4, 4))
    with pytest.raises(ValueError, match="groups=2 must divide"):
        Conv2d(3, 8, 3, groups=2)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        Conv2d(3, 8, 3, stride=0)
    with pytest.raises(TypeError, match="kernel_size must be an int or a pair"):
        Conv2d(3, 8, 2.5)
    with pytest.raises(ValueError, match="padding .* at most half"):
        MaxPool2d(2, padding=2)
    x = np.ones((2, 3, 8, 8), np.float32)
    w = np.ones((4, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="w expects 2 input channels .* x has C=3"):
        B.conv2d(x, w)
    with pytest.raises(TypeError, match="x must have dtype float32 or float64, got int64"):
        B.conv2d(np.ones((2, 3, 8, 8), np.int64), w)
    with pytest.raises(ValueError, match="x must be 4-D"):
        B.conv2d(np.ones((3, 8, 8), np.float32), w)
    with pytest.raises(ValueError, match="linear: x has 5 features but w expects"):
        B.linear(np.ones((2, 5), np.float32), np.ones((3, 4), np.float32))
    with pytest.raises(ValueError, match="dy must have shape"):
        B.conv2d_backward(np.ones((2, 4, 5, 5), np.float32), x, np.ones((4, 3, 3, 3),
                                                                          np.float32))
    with pytest.raises(ValueError, match="Linear expects"):
        Sequential(Flatten(), Linear(10, 2)).output_shape((3, 2, 2))
    with pytest.raises(ValueError, match="Dropout: p must be in"):
        Dropout(1.0)


def test_train_eval_modes_and_dropout_determinism():
    net = Sequential(Flatten(), Dropout(0.5)).bind("numpy", np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((4, 1, 3, 3)).astype(np.float32)
    y1 = net.forward(x)
    y2 = net.forward(x)
    assert (y1 == 0).any() and not np.array_equal(y1, y2)  # a fresh mask per step
    net.eval()
    np.testing.assert_array_equal(net.forward(x), x.reshape(4, -1))
    state = net.extra_state()
    assert state["1"]["calls"] == 2


def test_optimizers_reduce_loss_and_validate():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((32, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 32).astype(np.int32)
    for make in (lambda p: SGD(p, 0.05, momentum=0.9, nesterov=True, weight_decay=1e-4,
                               backend="numpy"),
                 lambda p: Adam(p, 1e-3, backend="numpy")):
        net = lenet5(backend="numpy", seed=1)
        lossf = SoftmaxCrossEntropy().bind("numpy")
        opt = make(net.parameters())
        losses = []
        for _ in range(15):
            losses.append(float(lossf.forward(net.forward(x), y)))
            net.backward(lossf.backward())
            opt.step()
        assert losses[-1] < 0.5 * losses[0]
    with pytest.raises(ValueError, match="lr must be"):
        SGD(lenet5(backend="numpy").parameters(), -1.0, backend="numpy")
    with pytest.raises(ValueError, match="nesterov=True needs momentum"):
        SGD(lenet5(backend="numpy").parameters(), 0.1, nesterov=True, backend="numpy")


def test_lr_schedules():
    s = StepLR(0.1, step_size=2, gamma=0.5)
    assert [s.lr_at(e) for e in range(5)] == [0.1, 0.1, 0.05, 0.05, 0.025]
    c = CosineLR(0.1, total=4)
    assert c.lr_at(0) == pytest.approx(0.1) and c.lr_at(2) == pytest.approx(0.05)
    assert c.lr_at(4) == pytest.approx(0.0)


def test_state_dict_round_trip_and_mismatch():
    a = lenet5(backend="numpy", seed=1)
    b = lenet5(backend="numpy", seed=2)
    b.load_state_dict(a.state_dict())
    for (n1, p1), (n2, p2) in zip(a.named_parameters(), b.named_parameters()):
        assert n1 == n2 and np.array_equal(p1.data, p2.data)
    sd = a.state_dict()
    sd["0.weight"] = sd["0.weight"][:3]
    with pytest.raises(ValueError, match="0.weight"):
        b.load_state_dict(sd)
