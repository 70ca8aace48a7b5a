"""bf16 activation storage in the layer graph (gpucnn/nn/module.py's Sequential,
gpucnn/ops/storage.py): under precision bf16 the layers of a device backend pass bf16 tensors
(uint16 bits) to each other — layers with bf16 kernels (``bf16_native``) take and return them,
the others get float32 converted from them and have their output rounded back — and the
network's output and input gradient are float32. The reference backend's ops round where the
kernels do (gpucnn.ops.dispatch.bf16_activations), so its layer graph is the oracle of the
device's, fused conv + ReLU + max-pool included (whose pool sees the rounded conv output: its
ties and switches are the bf16 values').

Bound (emu against reference, both bf16): both round each layer's output to bf16 once (a
relative error of at most 2^-9 per element); they differ only where a differently ordered FP32
sum lands on the other side of a rounding boundary, which moves that element by one bf16 unit
(2^-8 relative). The norm-wise difference of the logits and of every gradient must stay below
one unit, 2^-8 (measured: see the failure message)."""
import numpy as np
import pytest

from gpucnn import get_backend
from gpucnn.models import build_model
from gpucnn.nn import SoftmaxCrossEntropy
from gpucnn.ops.precision import bf16_to_float32, round_bf16

BOUND = 2.0 ** -8
BATCH = 4


def _record(net):
    """(layer index, 'forward' / 'backward', the dtype it got, its values as float32)."""
    seen = []
    for i, layer in enumerate(net.layers):
        for what in ("forward", "backward"):
            def wrapped(a, _f=getattr(layer, what), _i=i, _w=what):
                seen.append((_i, _w, a.dtype, np.asarray(layer.backend.to_numpy(a))))
                return _f(a)
            setattr(layer, what, wrapped)
    return seen


def _mini_alexnet():
    """Every bf16-native layer kind unfused (LRN between the ReLU and the pool), dropout."""
    from gpucnn.nn import (Conv2d, Dropout, Flatten, Linear, LocalResponseNorm, MaxPool2d,
                           ReLU, Sequential)
    return Sequential(Conv2d(3, 8, 5, stride=2, padding=1), ReLU(),
                      LocalResponseNorm(5, 1e-2, 0.75, 2.0), MaxPool2d(3, 2),
                      Conv2d(8, 12, 3, padding=1, groups=2), ReLU(), MaxPool2d(2), Flatten(),
                      Dropout(0.5), Linear(12 * 3 * 3, 16), ReLU(), Linear(16, 10))


def _step(B, x, y, model="lenet5", record=False):
    net = (build_model(model, backend=B, seed=5) if model != "mini_alexnet"
           else _mini_alexnet().bind(B, np.random.default_rng(5)))
    seen = _record(net) if record else None
    lossf = SoftmaxCrossEntropy().bind(B)
    logits = net.forward(B.asarray(x))
    lossf.forward(logits, B.asarray(y))
    dx = net.backward(lossf.backward())
    grads = {n: B.to_numpy(p.grad) for n, p in net.named_parameters()}
    return net, B.to_numpy(logits), dx, grads, seen


def _batch(rng, shape=(BATCH, 1, 28, 28), classes=10):
    return (rng.standard_normal(shape).astype(np.float32),
            rng.integers(0, classes, shape[0]).astype(np.int32))


@pytest.mark.parametrize("kind", ["device", "reference"])
@pytest.mark.parametrize("model,shape", [("lenet5", (BATCH, 1, 28, 28)),
                                         ("mini_alexnet", (BATCH, 3, 31, 31))])
def test_layers_pass_bf16(device_precision, rng, kind, model, shape):
    B = device_precision("bf16") if kind == "device" else get_backend("reference", "bf16")
    x, y = _batch(rng, shape)
    net, logits, dx, grads, seen = _step(B, x, y, model, record=True)
    assert logits.dtype == np.float32 and dx is None   # the first conv computes no dx
    active = [i for i, layer in enumerate(net.layers) if layer.fused_into is None]
    assert {i for i, *_ in seen} == set(active)
    for i, what, dtype, values in seen:
        layer = net.layers[i]
        want = np.uint16 if layer.bf16_native else np.float32
        assert dtype == want, f"layer {i} {layer!r} got a {dtype} {what} input, expected {want}"
        if dtype == np.float32:   # converted from bf16: every value is a bf16 value
            assert np.array_equal(bf16_to_float32(round_bf16(values)).view(np.uint32),
                                  values.view(np.uint32)), f"layer {i} {what}: not bf16 values"
    # what carries the bytes of LeNet's activations has bf16 kernels (the convolutions), and
    # so do the fully connected layers (gpucnn/ops/linear.py)
    for kind in ("Conv2d", "Linear"):
        found = [i for i in active if type(net.layers[i]).__name__ == kind]
        assert found and all(net.layers[i].bf16_native for i in found), kind


def test_fp32_layers_pass_float32(device_precision, rng):
    x, y = _batch(rng)
    for precision in ("fp32", "tf32"):
        *_, seen = _step(device_precision(precision), x, y, record=True)
        assert {d for _, _, d, _ in seen} == {np.dtype(np.float32)}, precision


@pytest.mark.parametrize("model,shape", [("lenet5", (BATCH, 1, 28, 28)),
                                         ("mini_alexnet", (BATCH, 3, 31, 31))])
def test_device_matches_reference(device_precision, rng, model, shape):
    x, y = _batch(rng, shape)
    _, dev_logits, _, dev_grads, _ = _step(device_precision("bf16"), x, y, model)
    _, ref_logits, _, ref_grads, _ = _step(get_backend("reference", "bf16"), x, y, model)
    errs = {"logits": (dev_logits, ref_logits), **{n: (dev_grads[n], ref_grads[n])
                                                  for n in ref_grads}}
    rel = {n: float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
           for n, (a, b) in errs.items()}
    assert max(rel.values()) < BOUND, f"norm-wise relative differences: {rel}"


def _held_bytes(net):
    """Bytes of the arrays the layers keep after a forward for their backward (inputs,
    outputs, switches, masks, scales: every array attribute outside the plans)."""
    held = {id(a): a.nbytes for layer in net.layers for name, a in vars(layer).items()
            if isinstance(a, np.ndarray) and not name.startswith("_")}  # one array kept twice
    return sum(held.values())                                        # (a conv's y, LRN's x)


# bf16 / fp32 bytes held, at most (measured at batch 32: alexnet 0.653, vgg16 0.572 on 224x224
# and 0.574 on the 64x64 inputs used here; 0.661 and 0.574 while the fully connected layers
# held float32 copies): what stays 4 bytes is the max-pool switches (int32), LRN's scale and
# dropout's mask (float32).
HELD_RATIO = {"alexnet": 0.67, "vgg16": 0.58}


@pytest.mark.parametrize("model,shape", [("alexnet", (3, 227, 227)), ("vgg16", (3, 64, 64))])
def test_held_activation_bytes(model, shape):
    """What a training step keeps between forward and backward, at batch 32 on the null
    device (the host path with real arrays, nothing computed): bf16 holds the convolutions'
    inputs and outputs, the ReLU outputs and LRN's input and output in half the bytes."""
    from gpucnn.backends.null import make_null_backend
    held = {}
    for precision in ("fp32", "bf16"):
        B = make_null_backend()
        B.use_precision(precision)
        net = build_model(model, backend="numpy", seed=1, input_shape=shape)
        net.bind(B, np.random.default_rng(2)).forward(B.asarray(np.zeros((32, *shape),
                                                                        np.float32)))
        held[precision] = _held_bytes(net)
    ratio = held["bf16"] / held["fp32"]
    assert 0.5 < ratio <= HELD_RATIO[model], (
        f"{model}: held bytes {held} (bf16 / fp32 = {ratio:.3f})")
