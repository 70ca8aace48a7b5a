"""``gpucnn train --model net.onnx`` (issue 20): an imported net trains from the file's weights
(its first forward is onnxruntime's and PyTorch's) or re-initialised with --reinit; the
checkpoint stores it as the model-file description of its layers, so --resume (exactly),
verify's reader and ``gpucnn export`` need the checkpoint only; built layers described as
model-file entries rebuild the same layers; wrong class counts and --reinit misuse are clear
errors. Real Fashion-MNIST, numpy backend."""
import json
import os

import numpy as np
import pytest

from harness import stable_seed

onnx = pytest.importorskip("onnx", reason="the onnx extra: pip install '.[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="the onnx extra: pip install '.[onnx]'")
torch = pytest.importorskip("torch")

from test_onnx import TORCH_NETS, _forward, _ort, _rel, _torch_export  # noqa: E402

from gpucnn.checkpoint import CheckpointError, open_checkpoint  # noqa: E402
from gpucnn.cli import main  # noqa: E402
from gpucnn.filerules.netfile import check_layers  # noqa: E402
from gpucnn.modelfile import build_layers, layer_entries  # noqa: E402
from gpucnn.models import alexnet_cifar, describe_model, lenet5, sequential  # noqa: E402
from gpucnn.nn import (AvgPool2d, Conv2d, Dropout, Flatten, Linear, LocalResponseNorm,  # noqa: E402
                       LPPool2d, MaxPool2d, ReLU, Sequential, SoftmaxCrossEntropy)
from gpucnn.onnx import OnnxError, export, load  # noqa: E402
from gpucnn.train import TrainConfig, Trainer  # noqa: E402
from gpucnn.verify.source import build_copy, load_model_source  # noqa: E402

REL = 1e-5


def _params(model):
    return {n: model.backend.to_numpy(p.data).copy() for n, p in model.named_parameters()}


# ---- built layers -> model-file entries -> the same layers --------------------------------------
def _every_option_net():
    """Every layer type and every option model files describe, non-default values included."""
    net = Sequential(
        Conv2d(3, 8, (3, 5), stride=(1, 2), padding=(1, 2), bias=False), ReLU(),
        LocalResponseNorm(3, 1e-3, 0.5, 1.5),
        MaxPool2d(3, 2, padding=1, dilation=(1, 2), ceil_mode=True),
        Conv2d(8, 8, 3, dilation=2, groups=4, padding="same"), ReLU(),
        LPPool2d(3, 2, 1, ceil_mode=True),
        AvgPool2d((2, 3), (1, 2), padding=1, ceil_mode=True, count_include_pad=False,
                  divisor_override=5),
        AvgPool2d(2), Flatten(), Dropout(0.3), Linear(32, 20, bias=False), ReLU(),
        Linear(20, 10))
    net.input_shape = (3, 16, 20)
    return net


def _check_rebuilds(net, rng, outputs=True):
    """build_layers(layer_entries(layers)) gives layers with the same reprs and parameter
    shapes; with the weights copied (``outputs``), the same outputs, exactly."""
    entries = layer_entries(net.layers)
    assert check_layers(entries, "entries", ValueError) == entries  # model-file schema
    assert json.loads(json.dumps(entries)) == entries  # plain JSON, as checkpoints store it
    copy = Sequential(*build_layers(entries, net.input_shape))
    assert [repr(a) for a in copy.layers] == [repr(b) for b in net.layers]
    assert [(type(a), getattr(a, "weight_shape", None), getattr(a, "use_bias", None))
            for a in copy.layers] == \
        [(type(b), getattr(b, "weight_shape", None), getattr(b, "use_bias", None))
         for b in net.layers]
    if outputs:
        copy.bind("numpy", np.random.default_rng(0)).load_state_dict(net.state_dict())
        x = rng.standard_normal((2, *net.input_shape)).astype(np.float32)
        np.testing.assert_array_equal(_forward(copy.eval(), x), _forward(net.eval(), x))
    return entries


def test_layer_entries_rebuild_every_layer_and_option(request):
    rng = np.random.default_rng(stable_seed(request.node.nodeid))
    net = _every_option_net().bind("numpy", rng)
    entries = _check_rebuilds(net, rng)
    assert entries[0] == ["conv", {"out": 8, "kernel_size": [3, 5], "stride": [1, 2],
                                   "padding": [1, 2], "bias": False}]
    assert entries[2] == ["lrn", {"size": 3, "alpha": 1e-3, "beta": 0.5, "k": 1.5}]
    assert entries[8:10] == [["avgpool", {"kernel_size": 2}], ["flatten", {}]]  # defaults left out
    assert entries[-1] == ["linear", {"out": 10}]


def test_layer_entries_rebuild_the_built_in_models(request):
    rng = np.random.default_rng(stable_seed(request.node.nodeid))
    for build in (lenet5, alexnet_cifar):
        _check_rebuilds(build(backend="numpy", seed=int(rng.integers(1 << 30))), rng)
    for name, kw in (("alexnet", {"towers": True}), ("alexnet", {}), ("vgg11", {}),
                     ("vgg16", {"input_shape": (3, 32, 32)})):
        _check_rebuilds(describe_model(name, **kw), rng, outputs=False)  # no weights allocated


@pytest.mark.parametrize("name", sorted(TORCH_NETS))
def test_layer_entries_rebuild_imported_torch_nets(name, request, tmp_path):
    torch.manual_seed(stable_seed(request.node.nodeid) % (1 << 31))
    cls, shape = TORCH_NETS[name]
    net = load(_torch_export(cls().eval(), shape, tmp_path / "t.onnx"), backend="numpy")
    _check_rebuilds(net, np.random.default_rng(stable_seed(request.node.nodeid)))


def test_a_layer_model_files_cannot_describe_is_named():
    with pytest.raises(ValueError, match=r"layer 1 \(SoftmaxCrossEntropy.*\): a model file "
                                         r"cannot describe a SoftmaxCrossEntropy \(it "
                                         r"describes conv, maxpool"):
        layer_entries([ReLU(), SoftmaxCrossEntropy()])


# ---- gpucnn train --model net.onnx ----------------------------------------------------------------
def _cfg(path, tmp_path, **kw):
    return TrainConfig(**{**dict(model=str(path), dataset="fashion-mnist", epochs=1,
                                 batch_size=64, limit=256, test_limit=128, backend="numpy",
                                 progress=False), **kw})


@pytest.fixture
def lenet5_onnx(lenet5_checkpoint, tmp_path):
    """(the trained LeNet-5 of the shared checkpoint on numpy, its export via
    gpucnn.onnx.export)."""
    net = build_copy(load_model_source(lenet5_checkpoint), "numpy", seed=0).eval()
    return net, export(net, tmp_path / "lenet5.onnx")


def test_an_exported_lenet5_trains_from_its_weights(lenet5_onnx, tmp_path, capsys):
    net, path = lenet5_onnx
    tr = Trainer(_cfg(path, tmp_path))
    assert "starting from the file's weights" in capsys.readouterr().out
    x, _ = next(tr.test_set.batches(8, shuffle=False))
    tr.model.eval()
    first = _forward(tr.model, x)
    np.testing.assert_array_equal(first, _forward(net, x))  # the same layers, the same weights
    assert _rel(first, _ort(path, x)) < REL  # and what onnxruntime makes of the file
    tr.model.train()
    straight = Trainer(_cfg(path, tmp_path)).evaluate
    assert tr.evaluate(tr.test_set) == straight(tr.test_set)

    # the CLI run: its checkpoint holds the description and the config says where weights came from
    ck, metrics = tmp_path / "ck.npz", tmp_path / "m.json"
    assert main(["train", "--model", str(path), "--backend", "numpy", "--limit", "256",
                 "--test-limit", "128", "--batch-size", "64", "--no-progress",
                 "--checkpoint", str(ck), "--metrics-json", str(metrics)]) == 0
    m = json.loads(metrics.read_text())
    assert m["config"]["model"] == str(path) and m["config"]["reinit"] is False
    assert np.isfinite(m["epochs"][0]["train_loss"])
    with open_checkpoint(ck) as c:
        meta = c.metadata
    assert meta["config"]["reinit"] is False
    assert meta["model"] == {"name": "sequential", "input_shape": [1, 28, 28],
                             "kwargs": {"layers": layer_entries(net.layers), "num_classes": 10}}

    # verify's reader and gpucnn export work from the checkpoint alone
    os.rename(path, tmp_path / "moved.onnx")
    copy = build_copy(load_model_source(ck), "numpy", seed=1).eval()
    trained = _params(copy)
    assert any(not np.array_equal(trained[k], v) for k, v in net.state_dict().items())
    again = tmp_path / "again.onnx"
    assert main(["export", str(ck), str(again)]) == 0
    assert _rel(_ort(again, x), _forward(copy, x)) < REL


def test_reinit_trains_the_architecture_from_the_seeded_init(lenet5_onnx, tmp_path, capsys):
    net, path = lenet5_onnx
    tr = Trainer(_cfg(path, tmp_path, reinit=True, seed=7))
    assert "re-initialised (--reinit, seed 7)" in capsys.readouterr().out
    fresh = sequential(layers=layer_entries(net.layers), num_classes=10,
                       input_shape=net.input_shape, backend="numpy", seed=7)
    got, want, file_weights = _params(tr.model), _params(fresh), net.state_dict()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert not np.array_equal(got["0.weight"], file_weights["0.weight"])
    metrics = tmp_path / "m.json"
    assert main(["train", "--model", str(path), "--reinit", "--backend", "numpy", "--limit",
                 "128", "--test-limit", "64", "--no-progress",
                 "--metrics-json", str(metrics)]) == 0
    assert json.loads(metrics.read_text())["config"]["reinit"] is True


def test_resume_of_an_onnx_run_is_exact(lenet5_onnx, tmp_path):
    _, path = lenet5_onnx
    ck = str(tmp_path / "ck.npz")
    straight = Trainer(_cfg(path, tmp_path, epochs=2, limit=192))
    straight.fit()
    first = Trainer(_cfg(path, tmp_path, epochs=2, limit=192, checkpoint=ck))

    def interrupt(tr):
        if tr.epoch == 1 and tr.batch_in_epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        first.fit(on_step=interrupt)
    resumed = Trainer(_cfg(path, tmp_path, epochs=2, limit=192, checkpoint=ck, resume=True))
    resumed.load(ck)
    assert (resumed.epoch, resumed.batch_in_epoch) == (1, 1)
    resumed.fit()
    a, b = _params(straight.model), _params(resumed.model)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert resumed.history[-1]["train_loss"] == straight.history[-1]["train_loss"]
    # resuming it as a --reinit run (or the reverse) is refused, naming the key
    with pytest.raises(CheckpointError, match=r"reinit: checkpoint False, now True"):
        Trainer(_cfg(path, tmp_path, epochs=2, limit=192, checkpoint=ck, resume=True,
                     reinit=True)).load(ck)


def test_a_pytorch_net_trains_one_step_from_its_weights(request, tmp_path):
    torch.manual_seed(stable_seed(request.node.nodeid) % (1 << 31))
    cls, shape = TORCH_NETS["lenet5"]
    tnet = cls().eval()
    path = _torch_export(tnet, shape, tmp_path / "torch_lenet.onnx")  # dynamo=False
    tr = Trainer(_cfg(path, tmp_path, limit=32, batch_size=32, test_limit=32))
    x, _ = next(tr.test_set.batches(4, shuffle=False))
    tr.model.eval()
    with torch.no_grad():
        assert _rel(_forward(tr.model, x), tnet(torch.from_numpy(x)).numpy()) < REL
    metrics = tmp_path / "m.json"
    assert main(["train", "--model", str(path), "--backend", "numpy", "--limit", "32",
                 "--batch-size", "32", "--test-limit", "32", "--no-progress",
                 "--metrics-json", str(metrics)]) == 0
    m = json.loads(metrics.read_text())
    assert m["eager_steps"] == 1 and np.isfinite(m["epochs"][0]["train_loss"])


def test_an_image_folder_takes_the_onnx_nets_input_shape(request, tmp_path, capsys):
    """PyTorch's AlexNet-CIFAR variant (LRN, ceil_mode pools, grouped and dilated conv, L2
    pooling, dropout) trains one step on a 10-class folder at its graph's 3x34x34."""
    from PIL import Image
    rng = np.random.default_rng(stable_seed(request.node.nodeid))
    torch.manual_seed(stable_seed(request.node.nodeid) % (1 << 31))
    cls, shape = TORCH_NETS["alexnet_cifar"]
    path = _torch_export(cls().eval(), shape, tmp_path / "alex.onnx")
    for c in range(10):
        os.makedirs(tmp_path / "d" / "train" / f"c{c}")
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(
                tmp_path / "d" / "train" / f"c{c}" / f"{i}.png")
    metrics = tmp_path / "m.json"
    args = ["train", "--model", str(path), "--dataset", "folder", "--data-dir",
            str(tmp_path / "d"), "--val-split", "0.5", "--batch-size", "10", "--backend",
            "numpy", "--no-progress", "--workers", "0"]
    assert main([*args, "--metrics-json", str(metrics)]) == 0
    m = json.loads(metrics.read_text())
    assert m["input_shape"] == [3, 34, 34] and m["eager_steps"] == 1
    assert np.isfinite(m["epochs"][0]["train_loss"])
    capsys.readouterr()
    assert main([*args, "--channels", "1"]) == 2
    assert f"--channels 1 differs from the 3 input channels of {path}" in capsys.readouterr().err


# ---- clear errors ----------------------------------------------------------------------------------
def test_a_class_count_other_than_the_datas_is_refused_naming_the_file(tmp_path, capsys):
    net = Sequential(Conv2d(1, 4, 5, stride=3), ReLU(), Flatten(), Linear(256, 7))
    net.input_shape = (1, 28, 28)
    path = export(net.bind("numpy", np.random.default_rng(0)), tmp_path / "seven.onnx")
    assert main(["train", "--model", str(path), "--backend", "numpy", "--limit", "8",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: the net gives 7 class scores per image, fashion-mnist has 10 classes" in err
    # a net whose output is not one score per class (gpucnn's export refuses to write one)
    h = onnx.helper
    w = onnx.numpy_helper.from_array(np.zeros((10, 1, 28, 28), np.float32), "w")
    graph = h.make_graph([h.make_node("Conv", ["x", "w"], ["y"], name="conv")], "maps",
                         [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 1, 28, 28])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 10, 1, 1])],
                         [w])
    path = tmp_path / "maps.onnx"
    path.write_bytes(h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
                     .SerializeToString())
    assert main(["train", "--model", str(path), "--backend", "numpy", "--limit", "8",
                 "--no-progress"]) == 2
    assert "gives a 10x1x1 output per image; training needs one score per class" in \
        capsys.readouterr().err


def test_reinit_without_an_onnx_model_and_a_conflicting_input_are_refused(lenet5_onnx,
                                                                          capsys):
    for model in ("lenet5", "net.json"):
        assert main(["train", "--model", model, "--reinit", "--backend", "numpy",
                     "--limit", "8", "--no-progress"]) == 2
        assert "--reinit applies to an .onnx --model only" in capsys.readouterr().err
    _, path = lenet5_onnx
    assert main(["train", "--model", str(path), "--input", "1,32,32", "--backend", "numpy",
                 "--limit", "8", "--no-progress"]) == 2
    assert f"--input 1,32,32 differs from the graph input of {path} (1,28,28)" in \
        capsys.readouterr().err
    with pytest.raises(OnnxError, match="no such"):
        Trainer(TrainConfig(model="missing.onnx", backend="numpy", limit=8, progress=False))
