"""Graph mode and precision combine (issue 18 part 6): on the emulator, LeNet-5's training
steps replayed as graphs are bit-identical to eager steps in ``tf32`` and in ``bf16`` (the
graph records the tensor-core kernels of that precision, and the precision changes the
result, so a replay that silently ran fp32 kernels could not pass), and ``gpucnn train
--cuda-graphs --precision tf32 --backend emu`` replays steps and records the precision in its
metrics.

What the emulator cannot say: that a CUDA graph captured on a GPU replays the WMMA kernels
bit-identically too (bench/gpu_validate.sh times replays per precision on a lent GPU; it
does not compare their bits)."""
import json
import warnings

import numpy as np
import pytest

from gpucnn.backends.device import make_emu_backend
from gpucnn.train_graph import GraphModeWarning

STEPS, BATCH = 4, 4


@pytest.fixture(scope="module")
def emu_in():
    """``make(precision)``: one emulator backend per precision, poisoned outputs (a write the
    replay skips shows as NaN)."""
    made = {}

    def make(precision):
        if precision not in made:
            B = make_emu_backend(checks=True, seed=5)
            B.use_precision(precision)
            assert B.precision == precision
            made[precision] = B
        return made[precision]
    return make


def _lenet_steps(B, graphs):
    """STEPS LeNet-5 training steps (SGD with momentum and weight decay), eager or through
    the trainer's GraphSteps: the parameters, the losses, the kernels the graph replays."""
    from gpucnn.models import build_model
    from gpucnn.nn import SoftmaxCrossEntropy
    from gpucnn.optim import SGD
    from gpucnn.train_graph import GraphSteps
    rng = np.random.default_rng(3)
    model = build_model("lenet5", backend=B, seed=5)
    opt = SGD(model.parameters(), 0.05, 0.9, weight_decay=1e-4, backend=B)
    loss = SoftmaxCrossEntropy().bind(B)

    def update(x, y):
        out = loss.forward(model.forward(x), y)
        model.backward(loss.backward())
        opt.step()
        return out, loss.probs
    step = GraphSteps(B, update, model, opt) if graphs else update
    losses = []
    for _ in range(STEPS):
        x = B.asarray(rng.standard_normal((BATCH, 1, 28, 28)).astype(np.float32))
        y = B.asarray(rng.integers(0, 10, BATCH).astype(np.int32), dtype=np.int32)
        losses.append(float(B.to_numpy(step(x, y)[0])))
    kernels = set()
    if graphs:
        assert (step.replayed, step.eager) == (STEPS - 1, 1)
        kernels = {launch[0].name for g in step.graphs.values()
                   for launch in g.graph.launches}
    return [B.to_numpy(p.data) for p in model.parameters()], losses, kernels


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_lenet5_graph_replays_are_bit_identical_to_eager_steps(emu_in, precision):
    with warnings.catch_warnings():
        warnings.simplefilter("error", GraphModeWarning)  # no fall-back to eager steps
        g_params, g_losses, kernels = _lenet_steps(emu_in(precision), graphs=True)
    e_params, e_losses, _ = _lenet_steps(emu_in(precision), graphs=False)
    for a, b in zip(g_params, e_params):
        np.testing.assert_array_equal(a, b)
    assert g_losses == e_losses and all(np.isfinite(g_losses))
    # the graph replays this precision's tensor-core kernels (GEMMs and convolutions) ...
    tc = sorted(k for k in kernels if k.endswith(f"_{precision}")
                or f"_{precision}_" in k)
    assert tc, f"no {precision} kernel among the replayed launches: {sorted(kernels)}"
    # ... and they change the result: an fp32 run differs (so equality above is not two
    # fp32 runs agreeing)
    f_params, _, _ = _lenet_steps(emu_in("fp32"), graphs=False)
    assert any(not np.array_equal(a, b) for a, b in zip(g_params, f_params))


def test_cli_cuda_graphs_with_tf32_replays_and_records_the_precision(tmp_path, capsys):
    from gpucnn.cli import main
    metrics = tmp_path / "m.json"
    assert main(["train", "--model", "lenet5", "--epochs", "1", "--limit", "64",
                 "--test-limit", "32", "--batch-size", "16", "--backend", "emu",
                 "--no-progress", "--cuda-graphs", "--precision", "tf32",
                 "--metrics-json", str(metrics)]) == 0
    m = json.loads(metrics.read_text())
    assert m["precision"] == "tf32" and m["config"]["precision"] == "tf32"
    # 4 batches of 16: the first eager (plans, then the capture), the other 3 replayed
    assert m["graph_replayed_steps"] == 3 and m["eager_steps"] == 1, m
    assert np.isfinite(m["epochs"][-1]["train_loss"])
