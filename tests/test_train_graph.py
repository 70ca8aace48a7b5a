"""Graph mode (gpucnn/backends/graph.py, gpucnn/train_graph.py): capture and replay on the
emulator and the null device, capture's rules enforced on the CPU, and training steps
replayed as graphs bit-identical to eager ones."""
import warnings

import numpy as np
import pytest

from harness import training_update

from gpucnn.backends import get_backend
from gpucnn.backends.device import make_emu_backend
from gpucnn.backends.graph import GraphCaptureError, GraphUnsupported
from gpucnn.backends.null import make_null_backend
from gpucnn.train import TrainConfig, Trainer
from gpucnn.train_graph import GraphModeWarning


@pytest.fixture(scope="module")
def emu():
    return make_emu_backend(checks=True, seed=5)  # poisoned outputs: a skipped write shows


def _relu_linear(B, x, w):
    return B.linear(B.relu(x), w, relu=True)


def test_replay_equals_the_eager_call_and_nothing_runs_during_capture(emu, rng):
    B = emu
    x = B.asarray(rng.standard_normal((5, 7)).astype(np.float32))
    w = B.asarray(rng.standard_normal((3, 7)).astype(np.float32))
    eager = B.to_numpy(_relu_linear(B, x, w))  # plans made
    graph = B.capture(lambda a: _relu_linear(B, a, w), B.asarray(np.zeros((5, 7), np.float32)))
    assert np.isnan(B.to_numpy(graph.outputs)).all()  # captured, not run: still poisoned
    np.testing.assert_array_equal(B.to_numpy(graph.replay(x)), eager)
    x2 = B.asarray(rng.standard_normal((5, 7)).astype(np.float32))
    np.testing.assert_array_equal(B.to_numpy(graph.replay(x2)),
                                  B.to_numpy(_relu_linear(B, x2, w)))
    with pytest.raises(ValueError, match="keep its shape and dtype"):
        graph.replay(B.asarray(np.zeros((4, 7), np.float32)))


@pytest.mark.parametrize("call", ["to_numpy", "synchronize", "raise_device_errors"])
def test_a_host_read_or_sync_during_capture_is_an_error_naming_the_kernel(emu, rng, call):
    B = emu
    x = B.asarray(rng.standard_normal((4, 6)).astype(np.float32))
    B.relu(x)

    def unsafe(a):
        y = B.relu(a)
        getattr(B, call)(*((y,) if call == "to_numpy" else ()))
        return y
    with pytest.raises(GraphCaptureError, match=rf"{call}.*during graph capture \(after "
                                                r"kernel relu_forward\)"):
        B.capture(unsafe, x)
    assert B.module.recording is None  # the failed capture ended: the device works on
    np.testing.assert_array_equal(B.to_numpy(B.relu(x)), np.maximum(B.to_numpy(x), 0))


def test_the_cpu_backends_cannot_capture():
    for name in ("numpy", "reference"):
        with pytest.raises(GraphUnsupported, match="runs on the CPU"):
            get_backend(name).capture(lambda: None)


def test_a_null_graph_replays_in_one_call_and_counts_its_launches(rng):
    B = make_null_backend()
    x = B.asarray(rng.standard_normal((8, 16)).astype(np.float32))
    w = B.asarray(rng.standard_normal((4, 16)).astype(np.float32))
    _relu_linear(B, x, w)
    eager = B.module.launches
    graph = B.capture(lambda a: _relu_linear(B, a, w), B.asarray(np.zeros((8, 16), np.float32)))
    assert B.module.launches == eager  # nothing launched while capturing
    graph.replay(x)
    assert B.module.launches == 2 * eager


# ---- training steps as graphs --------------------------------------------------------------
def _train(backend, graphs, **kw):
    cfg = TrainConfig(model="lenet5", dataset="fashion-mnist", backend=backend, progress=False,
                      cuda_graphs=graphs, **{**dict(epochs=2, batch_size=32, lr=0.05,
                                                    momentum=0.9, weight_decay=1e-4,
                                                    schedule="step", limit=200,
                                                    test_limit=64), **kw})
    t = Trainer(cfg)
    return t, t.fit()


def _params(t):
    return [t.backend.to_numpy(p.data) for p in t.model.parameters()]


def test_graph_steps_are_bit_identical_to_eager_ones_on_emu():
    """LeNet-5, SGD with momentum and weight decay, a step schedule whose learning rate
    changes at the second epoch (read on the device: the same graph), a partial last batch
    (its own graph)."""
    g, mg = _train("emu", True)
    e, me = _train("emu", False)
    assert (mg["graph_replayed_steps"], mg["eager_steps"]) == (12, 2)
    lrs = [r["lr"] for r in mg["epochs"]]
    assert lrs[0] == 0.05 and lrs[1] == pytest.approx(0.005)  # the schedule did change it
    assert (me["graph_replayed_steps"], me["eager_steps"]) == (0, 14)
    for a, b in zip(_params(g), _params(e)):
        np.testing.assert_array_equal(a, b)
    assert [r["train_loss"] for r in mg["epochs"]] == [r["train_loss"] for r in me["epochs"]]
    assert g.opt.steps == e.opt.steps == 14


@pytest.mark.parametrize("backend", ["numpy"])
def test_ineligible_runs_warn_once_and_run_eagerly(backend):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        t, m = _train(backend, True, epochs=1)
    said = [w for w in seen if issubclass(w.category, GraphModeWarning)]
    assert len(said) == 1 and "runs on the CPU" in str(said[0].message)
    assert m["graph_replayed_steps"] == 0 and m["eager_steps"] == 7


# ---- what changes every step lives on the device: Adam's count, dropout's calls ------------
def _small_net():
    from gpucnn.nn import (Conv2d, Dropout, Flatten, Linear, LocalResponseNorm, MaxPool2d,
                           ReLU, Sequential)
    return Sequential(Conv2d(3, 8, 3, padding=1), ReLU(), MaxPool2d(2), LocalResponseNorm(5),
                      Flatten(), Linear(8 * 8 * 8, 32), ReLU(), Dropout(0.5), Linear(32, 10))


def _steps(B, make_model, make_opt, graphs, n, batch, shape, seed=0, replays=None,
           kernels=None):
    """n training steps (eager, or through GraphSteps: the trainer's); the parameters and
    the host counts after them. ``kernels``: a set that gets the names of the kernels the
    graphs replay."""
    from gpucnn.nn import SoftmaxCrossEntropy
    from gpucnn.train_graph import GraphSteps
    rng = np.random.default_rng(seed)
    model = make_model().bind(B, np.random.default_rng(seed + 1))
    opt = make_opt(model.parameters(), B)
    loss = SoftmaxCrossEntropy().bind(B)

    update = training_update(model, loss, opt)
    step = GraphSteps(B, update, model, opt) if graphs else update
    losses = []
    for _ in range(n):
        x = B.asarray(rng.standard_normal((batch, *shape)).astype(np.float32))
        y = B.asarray(rng.integers(0, 10, batch).astype(np.int32), dtype=np.int32)
        losses.append(float(B.to_numpy(step(x, y)[0])))
    if graphs:
        assert step.replayed == (n - 1 if replays is None else replays)
        if kernels is not None:
            kernels.update(launch[0].name for g in step.graphs.values()
                           for launch in g.graph.launches)
    return [B.to_numpy(p.data) for p in model.parameters()], losses, model.extra_state(), \
        opt.steps


def _sgd(ps, B, lr=0.05):
    from gpucnn.optim import SGD
    return SGD(ps, lr, 0.9, weight_decay=1e-4, backend=B)


def _adam(ps, B):
    from gpucnn.optim import Adam
    return Adam(ps, 1e-3, weight_decay=1e-4, backend=B)


@pytest.mark.parametrize("make_opt", [_sgd, _adam], ids=["sgd", "adam"])
def test_dropout_and_adam_replay_bit_identical_to_eager(emu, make_opt):
    """Dropout draws a new mask every replay (its call count advances on the device) and
    Adam's bias corrections follow its device step count: replays equal eager steps."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", GraphModeWarning)  # no fall-back to eager steps
        g = _steps(emu, _small_net, make_opt, True, 6, 4, (3, 16, 16))
    e = _steps(emu, _small_net, make_opt, False, 6, 4, (3, 16, 16))
    for a, b in zip(g[0], e[0]):
        np.testing.assert_array_equal(a, b)
    assert g[1:] == e[1:]  # losses, dropout calls, optimiser steps


def test_a_frozen_per_step_argument_is_caught(emu, monkeypatch):
    """Plant one: dropout's seed passed from the host (its temporary device copy) instead of
    the layer's device state. A graph would freeze it; the capture refuses the host copy,
    naming the op, and graph mode falls back to eager steps with one warning."""
    from gpucnn.nn import Dropout
    monkeypatch.setattr(Dropout, "_device_state", lambda self: None)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        g = _steps(emu, _small_net, _sgd, True, 4, 4, (3, 16, 16), replays=0)
    said = [str(w.message) for w in seen if issubclass(w.category, GraphModeWarning)]
    assert len(said) == 1 and "GraphCaptureError: dropout: a host value" in said[0]
    e = _steps(emu, _small_net, _sgd, False, 4, 4, (3, 16, 16))
    for a, b in zip(g[0], e[0]):
        np.testing.assert_array_equal(a, b)  # eager after all: the same steps


def test_a_host_copy_in_a_captured_step_is_refused(emu, rng):
    x = emu.asarray(rng.standard_normal((4, 6)).astype(np.float32))
    emu.relu(x)
    with pytest.raises(GraphCaptureError, match="asarray .* during graph capture"):
        emu.capture(lambda a: emu.relu(emu.asarray(np.ones((4, 6), np.float32))), x)
    with pytest.raises(GraphCaptureError, match="dropout: a host value copied"):
        emu.capture(lambda a: emu.dropout(a, 0.5, 7), x)


@pytest.mark.parametrize("steps", [pytest.param(5, id="5-steps"),
                                   pytest.param(20, id="20-steps", marks=pytest.mark.slow)])
def test_alexnet_cifar_replays_bit_identical_to_eager(emu, steps):
    """AlexNet-CIFAR (dropout, split-K linear layers), batch 2, a learning rate it does not
    diverge at (the losses are compared too)."""
    from gpucnn.models import alexnet_cifar

    def sgd(ps, B):
        return _sgd(ps, B, lr=1e-3)
    g = _steps(emu, lambda: alexnet_cifar(backend="numpy", seed=3), sgd, True, steps, 2,
               (3, 32, 32))
    e = _steps(emu, lambda: alexnet_cifar(backend="numpy", seed=3), sgd, False, steps, 2,
               (3, 32, 32))
    assert all(np.isfinite(g[1]))
    for a, b in zip(g[0], e[0]):
        np.testing.assert_array_equal(a, b)
    assert g[1:] == e[1:]


def test_resume_from_a_graph_mode_checkpoint_is_exact(tmp_path):
    """Interrupted mid-epoch in graph mode (replays under way), resumed in graph mode: the
    same parameters as the uninterrupted graph-mode run."""
    whole, _ = _train("emu", True)
    ck = str(tmp_path / "run.npz")

    def interrupt(tr):
        if tr.epoch == 1 and tr.batch_in_epoch == 3:
            raise KeyboardInterrupt
    cfg = dict(model="lenet5", dataset="fashion-mnist", backend="emu", progress=False,
               cuda_graphs=True, epochs=2, batch_size=32, lr=0.05, momentum=0.9,
               weight_decay=1e-4, schedule="step", limit=200, test_limit=64, checkpoint=ck)
    first = Trainer(TrainConfig(**cfg))
    with pytest.raises(KeyboardInterrupt):
        first.fit(on_step=interrupt)
    assert first.graph_steps.replayed > 0
    resumed = Trainer(TrainConfig(**cfg, resume=True))
    resumed.load(ck)
    resumed.fit()
    assert resumed.graph_steps.replayed > 0
    for a, b in zip(_params(whole), _params(resumed)):
        np.testing.assert_array_equal(a, b)


# ---- graph mode and precision combine (issue 18 part 6) -------------------------------------
# On the emulator, replayed LeNet-5 steps equal eager ones in tf32 and bf16: the graph records
# that precision's tensor-core kernels, and the precision changes the result, so a replay that
# silently ran fp32 kernels could not pass. (That a CUDA graph on a GPU replays the WMMA
# kernels bit-identically too, the emulator cannot say.)
def _lenet5():
    from gpucnn.models import build_model
    return build_model("lenet5", backend="numpy", seed=5)


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_replays_in_a_tensor_core_precision_are_bit_identical_to_eager(precision):
    made = {}

    def emu_in(p):
        if p not in made:
            made[p] = make_emu_backend(checks=True, seed=5)
            made[p].use_precision(p)
            assert made[p].precision == p
        return made[p]
    kernels = set()
    with warnings.catch_warnings():
        warnings.simplefilter("error", GraphModeWarning)  # no fall-back to eager steps
        g = _steps(emu_in(precision), _lenet5, _sgd, True, 4, 4, (1, 28, 28), kernels=kernels)
    e = _steps(emu_in(precision), _lenet5, _sgd, False, 4, 4, (1, 28, 28))
    for a, b in zip(g[0], e[0]):
        np.testing.assert_array_equal(a, b)
    assert g[1:] == e[1:] and all(np.isfinite(g[1]))
    # the graphs replay this precision's tensor-core kernels (GEMMs and convolutions) ...
    tc = [k for k in kernels if k.endswith(f"_{precision}") or f"_{precision}_" in k]
    assert tc, f"no {precision} kernel among the replayed launches: {sorted(kernels)}"
    # ... and they change the result: fp32 steps differ (so the equality above is not two
    # fp32 runs agreeing)
    f = _steps(emu_in("fp32"), _lenet5, _sgd, False, 4, 4, (1, 28, 28))
    assert any(not np.array_equal(a, b) for a, b in zip(g[0], f[0]))


def test_cli_cuda_graphs_with_tf32_replays_and_records_the_precision(tmp_path):
    import json

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
