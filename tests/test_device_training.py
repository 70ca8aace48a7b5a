"""Whole training steps on the device backend (emu here, cuda with --device-backend cuda)
equal the NumPy backend's steps: forward, loss, backward and the SGD update, all kernels."""
import numpy as np
import pytest

from gpucnn.models import build_model
from gpucnn.nn import SoftmaxCrossEntropy
from gpucnn.optim import SGD
from gpucnn.testing import rel_error


def _run(backend, model, x, y, steps, seed):
    net = build_model(model, backend=backend, seed=seed)
    lossf = SoftmaxCrossEntropy().bind(backend)
    opt = SGD(net.parameters(), 0.05, momentum=0.9, weight_decay=1e-4, backend=backend)
    losses = []
    for i in range(steps):
        xb, yb = backend.asarray(x[i]), backend.asarray(y[i], dtype=np.int32)
        logits = net.forward(xb)
        losses.append(float(backend.to_numpy(lossf.forward(logits, yb))))
        net.backward(lossf.backward())
        opt.step()
    params = {n: backend.to_numpy(p.data) for n, p in net.named_parameters()}
    return losses, params, backend.to_numpy(logits)


@pytest.mark.parametrize("model,shape,steps,batch", [
    ("lenet5", (1, 28, 28), 1, 8),
    ("alexnet_cifar", (3, 32, 32), 3, 2),
])
def test_training_steps_match_numpy(device_forward, numpy_backend, model, shape, steps, batch):
    device = device_forward
    rng = np.random.default_rng(7)
    x = [rng.standard_normal((batch, *shape)).astype(np.float32) for _ in range(steps)]
    y = [rng.integers(0, 10, batch).astype(np.int32) for _ in range(steps)]
    ref_losses, ref_params, ref_logits = _run(numpy_backend, model, x, y, steps, seed=3)
    losses, params, logits = _run(device, model, x, y, steps, seed=3)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-4)
    assert rel_error(logits, ref_logits) < 1e-4
    for name in ref_params:
        # Parameters moved by the updates must agree closely after every step.
        assert rel_error(params[name], ref_params[name]) < 1e-5, name


def test_cli_trains_end_to_end_on_emu(tmp_path):
    """`gpucnn train --backend emu` runs the whole loop on the emulated kernels."""
    import json

    from gpucnn.cli import main
    out = tmp_path / "m.json"
    assert main(["train", "--model", "lenet5", "--dataset", "fashion-mnist", "--epochs", "1",
                 "--limit", "512", "--test-limit", "256", "--batch-size", "64", "--backend",
                 "emu", "--no-progress", "--metrics-json", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["backend"] == "emu" and "emulator" in m["device"]
    assert np.isfinite(m["epochs"][0]["train_loss"])
    assert m["test_accuracy"] > 0.2  # 8 steps from scratch: well above chance (0.1)
