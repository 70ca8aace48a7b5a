"""Capture's allocation rule (gpucnn/backends/capture_rules.py), on the emulator and the null
device: during a capture only the device context allocates (ctx.empty, ctx.workspace,
B.empty); an upload or any other allocation is a GraphCaptureError naming the call, its
caller and the last kernel recorded, and graph mode then runs the step eagerly. (The cuda
backend's side, against a stub CuPy, is in tests/test_cuda_backend.py.)"""
import warnings

import re

import numpy as np
import pytest
from harness import stable_seed, training_update

from gpucnn.backends.device import make_emu_backend
from gpucnn.backends.graph import GraphCaptureError
from gpucnn.backends.null import make_null_backend
from gpucnn.train_graph import GraphModeWarning

HERE = r"tests/test_graph_rules\.py:\d+"


@pytest.fixture(scope="module")
def emu():
    return make_emu_backend(checks=True, seed=5)  # poisoned outputs: a skipped write shows


@pytest.fixture(params=["emu", "null"])
def device(request, emu):
    return emu if request.param == "emu" else make_null_backend()


# Each plant: what a graph-unsafe change might do with the step's array y, and how the error
# names it.
def upload(B, y):
    return B.asarray(np.ones(y.shape, np.float32))


def zeros(B, y):
    return B.zeros(y.shape)


def xp_zeros(B, y):
    return B.xp.zeros(y.shape, np.float32)


def xp_asarray(B, y):
    return B.ctx.xp.asarray(y)


def xp_concatenate(B, y):
    return B.ctx.xp.concatenate([y, y])


def xp_empty_like(B, y):
    return B.xp.empty_like(y)


PLANTS = {
    upload: r"asarray \(a host-to-device copy\)",
    zeros: r"zeros \(an allocation outside the device context\)",
    xp_zeros: r"numpy\.zeros \(an allocation outside the device context\)",
    xp_asarray: r"numpy\.asarray \(a host-to-device copy or an allocation outside",
    xp_concatenate: r"numpy\.concatenate \(an allocation outside",
    xp_empty_like: r"numpy\.empty_like \(an allocation outside",
}


@pytest.mark.parametrize("plant", list(PLANTS), ids=lambda p: p.__name__)
def test_an_upload_or_an_allocation_outside_the_context_is_refused_naming_it(device, rng,
                                                                             plant):
    B = device
    x = B.asarray(rng.standard_normal((4, 6)).astype(np.float32))
    B.relu(x)  # the plan exists: the capture records launches only

    def step(a):
        y = B.relu(a)
        plant(B, y)
        return y
    with pytest.raises(GraphCaptureError) as caught:
        B.capture(step, x)
    said = str(caught.value)
    assert re.search(PLANTS[plant] + r".* during graph capture \(after kernel relu_forward\), "
                     rf"in {plant.__name__} \({HERE}\): ", said), said
    assert ("a graph owns only what the device context allocates" in said
            or "a graph would freeze the value copied" in said), said
    # the failed capture ended and the array module is itself again
    assert B.module.recording is None and B.xp is np and B.ctx.xp is np
    assert not B.ctx.capturing
    B.relu(x)


def test_the_context_allocates_during_capture_and_the_graph_owns_it(emu, rng):
    """ctx.empty (B.empty) and ctx.workspace are the route a graph may own: allowed while
    capturing, and the replays write what was allocated then."""
    B = emu
    x = B.asarray(rng.standard_normal((4, 6)).astype(np.float32))
    B.relu(x)
    made = {}

    def step(a):
        made["empty"] = B.empty((3, 5))
        made["workspace"] = B.ctx.workspace("test_graph_rules", 17)
        assert B.xp.ndarray is np.ndarray and B.xp.float32 is np.float32  # the rest passes
        return B.relu(a)
    graph = B.capture(step, B.empty((4, 6)))
    assert made["empty"].shape == (3, 5) and made["workspace"].size == 17
    np.testing.assert_array_equal(B.to_numpy(graph.replay(x)), np.maximum(B.to_numpy(x), 0))
    assert B.xp is np and B.ctx.xp is np


def test_a_rule_broken_in_a_real_op_names_that_op(emu, rng):
    """The caller named is the op's own code (a layer's dropout passing a host seed)."""
    x = emu.asarray(rng.standard_normal((4, 6)).astype(np.float32))
    emu.relu(x)
    with pytest.raises(GraphCaptureError, match=r"dropout: a host value copied to the device "
                                                r"during graph capture \(before any kernel\), "
                                                r"in \w+ \(gpucnn/ops/[\w/]+\.py:\d+\)"):
        emu.capture(lambda a: emu.dropout(a, 0.5, 7), x)


# ---- inside a training step: graph mode falls back, naming the op --------------------------
def _net():
    from gpucnn.nn import Linear, ReLU, Sequential
    return Sequential(Linear(12, 16), ReLU(), Linear(16, 10))


def _train(B, steps, graphs, seed):
    """``steps`` SGD steps of a small net (through GraphSteps when ``graphs``): the
    parameters, the losses and the GraphSteps (or None)."""
    from gpucnn.nn import SoftmaxCrossEntropy
    from gpucnn.optim import SGD
    from gpucnn.train_graph import GraphSteps
    rng = np.random.default_rng(seed)
    model = _net().bind(B, np.random.default_rng(seed + 1))
    opt = SGD(model.parameters(), 0.05, 0.9, weight_decay=1e-4, backend=B)
    loss = SoftmaxCrossEntropy().bind(B)

    update = training_update(model, loss, opt)
    step = GraphSteps(B, update, model, opt) if graphs else update
    losses = []
    for _ in range(steps):
        x = B.asarray(rng.standard_normal((4, 12)).astype(np.float32))
        y = B.asarray(rng.integers(0, 10, 4).astype(np.int32), dtype=np.int32)
        losses.append(float(B.to_numpy(step(x, y)[0])))
    return [B.to_numpy(p.data) for p in model.parameters()], losses, (step if graphs else None)


@pytest.mark.parametrize("plant", [upload, xp_zeros], ids=lambda p: p.__name__)
def test_a_planted_upload_or_allocation_in_a_training_step_falls_back_naming_it(
        emu, monkeypatch, request, plant):
    from gpucnn.nn import Linear
    seed = stable_seed(request.node.nodeid)
    forward = Linear.forward

    def planted(self, x):
        y = forward(self, x)
        plant(self.backend, y)
        return y
    monkeypatch.setattr(Linear, "forward", planted)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        g = _train(emu, 4, True, seed)
    said = [str(w.message) for w in seen if issubclass(w.category, GraphModeWarning)]
    assert len(said) == 1, said
    # planted after the first Linear's launches: the error names the last of them
    assert re.search(r"the capture failed: GraphCaptureError: " + PLANTS[plant]
                     + r".* during graph capture \(after kernel \w+\), in "
                     + rf"{plant.__name__} \({HERE}\)", said[0]), said[0]
    assert g[2].replayed == 0 and g[2].eager == 4  # every step eager, none lost
    e = _train(emu, 4, False, seed)
    for a, b in zip(g[0], e[0]):
        np.testing.assert_array_equal(a, b)
    assert g[1] == e[1]


def test_the_unplanted_step_replays_bit_identical_to_eager(emu):
    """The control: the same small net without a plant captures and replays, equal to eager
    steps (so the fall-back above is the plant's doing)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", GraphModeWarning)
        g = _train(emu, 4, True, 3)
    assert g[2].replayed == 3
    e = _train(emu, 4, False, 3)
    for a, b in zip(g[0], e[0]):
        np.testing.assert_array_equal(a, b)
    assert g[1] == e[1]


# ---- every named model's step keeps the rules (the null device: the host path only) --------
SMALL_INPUT = {"alexnet": (3, 112, 112), "vgg11": (3, 32, 32), "vgg16": (3, 32, 32)}


@pytest.mark.parametrize("name,optimizer,precision",
                         [(n, "sgd", "fp32") for n in ("lenet5", "alexnet_cifar", "alexnet",
                                                       "vgg11", "vgg16")]
                         + [("lenet5", "adam", "fp32"), ("lenet5", "sgd", "bf16"),
                            ("alexnet", "sgd", "bf16")])
def test_every_named_models_training_step_can_be_captured(name, optimizer, precision):
    """Forward, loss, backward and update of each --model (smaller inputs where the layers
    allow, so the weights stay small) captured on the null device after one eager step: no
    rule broken, and the graph holds every launch of the eager step. bf16: activations held
    in bf16, with the conversions around the layers without bf16 kernels."""
    from gpucnn.models import build_model
    from gpucnn.nn import SoftmaxCrossEntropy
    from gpucnn.optim import SGD, Adam
    B = make_null_backend()
    B.use_precision(precision)
    shape = SMALL_INPUT.get(name)
    model = build_model(name, backend="numpy", seed=1,
                        **({"input_shape": shape} if shape else {}))
    model = model.bind(B, np.random.default_rng(2))
    opt = (SGD(model.parameters(), 0.01, 0.9, weight_decay=1e-4, backend=B)
           if optimizer == "sgd" else Adam(model.parameters(), 1e-3, backend=B))
    loss = SoftmaxCrossEntropy().bind(B)

    update = training_update(model, loss, opt)
    shape = shape or ((1, 28, 28) if name == "lenet5" else (3, 32, 32))
    x = B.asarray(np.zeros((2, *shape), np.float32))
    y = B.asarray(np.zeros(2, np.int32), dtype=np.int32)
    update(x, y)  # plans, workspaces, the optimiser's state
    B.module.reset()
    update(x, y)
    eager = B.module.launches
    graph = B.capture(update, x, y)
    assert len(graph.graph.recording.launches) == eager > 0
    names = {k.name for k, *_ in graph.graph.recording.launches}
    assert ("cast_to_bf16" in names) == (precision == "bf16")
    if precision == "bf16":   # the convolutions run on bf16 activations
        assert {n for n in names if n.startswith("conv_implicit_")} == {
            f"conv_implicit_{op}_bf16_bf16io" for op in ("fprop", "dgrad", "wgrad")}, names
        # and the fully connected layers too (split-K ones end in _bf16a: float partial sums)
        assert {n for n in names if n.startswith("sgemm_bf16_") and n.endswith("_bf16io")}
