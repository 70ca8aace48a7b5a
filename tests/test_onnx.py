"""ONNX export and import (gpucnn/onnx/), each direction checked against a program no one here
wrote: gpucnn's nets exported and run by onnxruntime; PyTorch's nets exported by
torch.onnx.export, imported, and run forward and backward on numpy and emu against PyTorch;
graphs that are not chains, and files that are not what they claim, refused by name."""
import json
import warnings

import numpy as np
import pytest

from harness import stable_seed

onnx = pytest.importorskip("onnx", reason="the onnx extra: pip install '.[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="the onnx extra: pip install '.[onnx]'")
torch = pytest.importorskip("torch")
nn = torch.nn

import gpucnn.filerules  # noqa: E402
from gpucnn import get_backend  # noqa: E402
from gpucnn.cli import main  # noqa: E402
from gpucnn.models import alexnet_cifar, lenet5  # noqa: E402
from gpucnn.nn import (AvgPool2d, Conv2d, Dropout, Flatten, Linear, LocalResponseNorm,  # noqa: E402
                       LPPool2d, MaxPool2d, ReLU, Sequential, SoftmaxCrossEntropy)
from gpucnn.onnx import OnnxError, export, load  # noqa: E402
from gpucnn.optim import SGD  # noqa: E402

REL = 1e-5


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def _forward(net, x):
    B = net.backend
    return B.to_numpy(net.forward(B.asarray(x)))


def _ort(path, x):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def _sgd_steps(net, rng, steps=3, batch=4):
    """A few training steps on random images, so the exported weights are trained ones."""
    B, loss = net.backend, SoftmaxCrossEntropy().bind(net.backend)
    opt = SGD(net.parameters(), lr=0.01, momentum=0.9, backend=B)
    for _ in range(steps):
        x = rng.standard_normal((batch, *net.input_shape)).astype(np.float32)
        y = rng.integers(0, 10, batch).astype(np.int32)
        loss.forward(net.forward(B.asarray(x)), B.asarray(y))
        net.backward(loss.backward())
        opt.step()
    return net.eval()


# ---- gpucnn -> ONNX -> onnxruntime ------------------------------------------------------------
@pytest.mark.parametrize("build", [lenet5, alexnet_cifar])
def test_trained_gpucnn_nets_run_the_same_in_onnxruntime(build, request, tmp_path):
    rng = np.random.default_rng(stable_seed(request.node.nodeid))
    net = _sgd_steps(build(backend="numpy", seed=int(rng.integers(1 << 30))), rng)
    path = export(net, tmp_path / "net.onnx", class_names=[str(i) for i in range(10)])
    x = rng.standard_normal((5, *net.input_shape)).astype(np.float32)  # batch 5: dynamic axis
    assert _rel(_ort(path, x), _forward(net, x)) < REL
    m = onnx.load(str(path))
    assert m.opset_import[0].version == 13
    weights = [i.name for i in m.graph.initializer if not i.name.endswith(".ratio")]
    assert weights == [n for n, _ in net.named_parameters()]  # named after our parameters
    props = {p.key: p.value for p in m.metadata_props}
    assert json.loads(props["class_names"]) == [str(i) for i in range(10)]
    assert json.loads(props["gpucnn.input_shape"]) == list(net.input_shape)
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"


def _options_net(backend, seed):
    """Every exported operator and option: LRN, ceil_mode max and average pools (partial
    windows at 16x16), grouped and dilated convolution, L2 pooling, dropout."""
    net = Sequential(
        Conv2d(3, 8, 3, padding=1), ReLU(), LocalResponseNorm(5, 1e-2, 0.75, 2.0),
        MaxPool2d(3, 2, padding=1, ceil_mode=True),                      # 16 -> 9
        Conv2d(8, 8, 3, dilation=2, groups=2, padding=2), ReLU(),
        LPPool2d(2, 2, 2),                                               # 9 -> 4
        AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False),  # 4 -> 3
        Flatten(), Dropout(0.3), Linear(72, 10))
    net.input_shape = (3, 16, 16)
    return net.bind(backend, np.random.default_rng(seed))


def test_every_exported_option_runs_the_same_in_onnxruntime(request, tmp_path):
    rng = np.random.default_rng(stable_seed(request.node.nodeid))
    net = _options_net("numpy", int(rng.integers(1 << 30))).eval()
    path = export(net, tmp_path / "opts.onnx", softmax=True)
    m = onnx.load(str(path))
    assert m.opset_import[0].version == 19  # the ceil_mode AveragePool needs it
    assert m.graph.output[0].name == "probabilities"
    x = rng.standard_normal((3, 3, 16, 16)).astype(np.float32)
    logits = _forward(net, x)
    e = np.exp(logits - logits.max(1, keepdims=True))
    assert _rel(_ort(path, x), e / e.sum(1, keepdims=True)) < REL
    back = load(path, backend="numpy").eval()  # and back: the same layers, the same outputs
    assert back.softmax_output and repr(back) == repr(net)
    assert np.array_equal(_forward(back, x), logits)


@pytest.mark.parametrize("layer, words", [
    (LocalResponseNorm(4), "even size"),
    (LPPool2d(3, 2), "p=3"),
    (AvgPool2d(2, divisor_override=3), "divisor_override"),
    (MaxPool2d(2, 2, padding=1, ceil_mode=True), "starts in the padding"),
])
def test_export_refuses_what_onnx_computes_otherwise_by_name(layer, words, tmp_path):
    net = Sequential(Conv2d(4, 4, 3), layer, Flatten())
    net.input_shape = (4, 7, 7)
    net.bind("numpy", np.random.default_rng(0))
    with pytest.raises(OnnxError, match=rf"layer 1 \({type(layer).__name__}.*{words}"):
        export(net, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


# ---- gpucnn export / summary on the command line ------------------------------------------------
def test_gpucnn_export_writes_the_checkpoints_model(lenet5_checkpoint, tmp_path, capsys):
    from gpucnn.verify.source import build_copy, load_model_source
    out = tmp_path / "lenet5.onnx"
    assert main(["export", str(lenet5_checkpoint), str(out)]) == 0
    model = build_copy(load_model_source(lenet5_checkpoint), "numpy", seed=0).eval()
    x = np.random.default_rng(1).standard_normal((4, 1, 28, 28)).astype(np.float32)
    assert _rel(_ort(out, x), _forward(model, x)) < REL
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["class_names"])[0] == "T-shirt/top"
    assert props["gpucnn.dataset"] == "fashion-mnist"
    assert main(["show", str(out), "--filters", "0", str(tmp_path / "f.png")]) == 0
    assert main(["export", str(lenet5_checkpoint), str(out)]) == 0  # its own previous export
    foreign = tmp_path / "notes.onnx"
    foreign.write_text("mine")
    assert main(["export", str(lenet5_checkpoint), str(foreign)]) == 2
    assert "--overwrite" in capsys.readouterr().err and foreign.read_text() == "mine"
    assert main(["export", str(lenet5_checkpoint), str(lenet5_checkpoint)]) == 2  # never a checkpoint
    assert main(["summary", str(out)]) == 0
    assert "Conv2d(1->6, 5x5, pad 2)" in capsys.readouterr().out


# ---- PyTorch -> torch.onnx.export -> gpucnn ----------------------------------------------------
class TorchLeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 6, 5, padding=2), nn.Conv2d(6, 16, 5)
        self.f1, self.f2, self.f3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.c1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.c2(x)), 2)
        x = x.view(x.size(0), -1)  # the Shape/Gather/Concat/Reshape chain
        return self.f3(torch.relu(self.f2(torch.relu(self.f1(x)))))


class TorchAlexNetCifar(nn.Module):
    """AlexNet-CIFAR's shape with LRN, ceil_mode pools (partial windows at 34x34), a grouped
    and a dilated convolution, L2 pooling and dropout."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 5, padding=2), nn.ReLU(), nn.LocalResponseNorm(5, 1e-2, 0.75, 2.0),
            nn.MaxPool2d(3, 2, ceil_mode=True),                          # 34 -> 17
            nn.Conv2d(16, 24, 3, padding=1, groups=2), nn.ReLU(),
            nn.LocalResponseNorm(3, 1e-3, 0.5, 1.0),
            nn.MaxPool2d(3, 2, ceil_mode=True),                          # 17 -> 8
            nn.Conv2d(24, 32, 3, padding=2, dilation=2), nn.ReLU(),
            nn.LPPool2d(2, 2),                                           # 8 -> 4
            nn.AvgPool2d(3, 2, ceil_mode=True))                          # 4 -> 2
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(128, 64), nn.ReLU(),
                                        nn.Linear(64, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


TORCH_NETS = {"lenet5": (TorchLeNet, (1, 28, 28)), "alexnet_cifar": (TorchAlexNetCifar, (3, 34, 34))}


def _torch_export(net, shape, path, dynamo=False, opset=13):
    x = torch.zeros(2, *shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(net, (x,), str(path), input_names=["input"], opset_version=opset,
                              dynamo=True, external_data=False, verbose=False)
        else:
            torch.onnx.export(net, (x,), str(path), input_names=["input"], opset_version=opset,
                              dynamo=False, dynamic_axes={"input": {0: "N"}})
    return path


def _check_against_torch(tnet, shape, path, backend, rng):
    x = rng.standard_normal((3, *shape)).astype(np.float32)
    labels = rng.integers(0, 10, 3)
    net = load(path, backend=backend)
    B = net.backend
    net.eval()
    tx = torch.from_numpy(x)
    ref = tnet(tx)
    assert _rel(_forward(net, x), ref.detach().numpy()) < REL
    # one backward step: the gradient of the mean cross-entropy of every parameter
    loss = SoftmaxCrossEntropy().bind(B)
    loss.forward(net.forward(B.asarray(x)), B.asarray(labels.astype(np.int32)))
    net.backward(loss.backward())
    tnet.zero_grad()
    nn.functional.cross_entropy(ref, torch.from_numpy(labels)).backward()
    tgrads = dict(tnet.named_parameters())
    assert len(net.onnx_names) == len(tgrads)
    for ours, theirs in net.onnx_names.items():
        p = dict(net.named_parameters())[ours]
        g = tgrads[theirs].grad.numpy()
        assert np.abs(B.to_numpy(p.grad) - g).max() <= 1e-4 * np.abs(g).max() + 1e-7, ours


@pytest.mark.parametrize("backend", ["numpy", "emu"])
@pytest.mark.parametrize("name", sorted(TORCH_NETS))
def test_torch_nets_import_and_train_like_pytorch(name, backend, request, tmp_path):
    torch.manual_seed(stable_seed(request.node.nodeid) % (1 << 31))
    cls, shape = TORCH_NETS[name]
    tnet = cls().eval()
    path = _torch_export(tnet, shape, tmp_path / "t.onnx")
    _check_against_torch(tnet, shape, path, get_backend(backend),
                         np.random.default_rng(stable_seed(request.node.nodeid)))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TORCH_NETS))
def test_torch_dynamo_exports_import_like_pytorch(name, request, tmp_path):
    torch.manual_seed(stable_seed(request.node.nodeid) % (1 << 31))
    cls, shape = TORCH_NETS[name]
    tnet = cls().eval()
    path = _torch_export(tnet, shape, tmp_path / "d.onnx", dynamo=True, opset=18)
    for backend in ("numpy", "emu"):
        _check_against_torch(tnet, shape, path, backend,
                             np.random.default_rng(stable_seed(request.node.nodeid)))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        return torch.flatten(self.b(y) + y, 1)


def test_a_residual_add_is_refused_naming_the_node(tmp_path):
    path = _torch_export(Residual().eval(), (3, 8, 8), tmp_path / "res.onnx")
    with pytest.raises(OnnxError, match=r"node '/Add' \(Add\) is not supported.*chains of Conv"):
        load(path, backend="numpy")


def test_a_subgraph_that_is_almost_torchs_lrn_is_refused(tmp_path):
    """torch's LRN subgraph with one node changed (k + ... becomes ... - k; or the channel
    window's kernel 5 becomes 3, which no longer fits its padding) is no LocalResponseNorm:
    refused, never imported as one."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LocalResponseNorm(5), nn.Flatten()).eval()
    m = onnx.load(str(_torch_export(net, (3, 6, 6), tmp_path / "lrn.onnx")))
    next(n for n in m.graph.node if n.op_type == "Add").op_type = "Sub"
    (tmp_path / "bad.onnx").write_bytes(m.SerializeToString())
    with pytest.raises(OnnxError, match=r"'/1/Add' \(Sub\): the subgraph from .* is not the "
                                        r"LocalResponseNorm torch exports"):
        load(tmp_path / "bad.onnx", backend="numpy")
    m = onnx.load(str(tmp_path / "lrn.onnx"))
    pool = next(n for n in m.graph.node if n.op_type == "AveragePool")
    next(a for a in pool.attribute if a.name == "kernel_shape").ints[0] = 3
    (tmp_path / "bad.onnx").write_bytes(m.SerializeToString())
    with pytest.raises(OnnxError, match=r"cannot reshape"):
        load(tmp_path / "bad.onnx", backend="numpy")
    assert "LocalResponseNorm(size 5" in repr(load(tmp_path / "lrn.onnx", backend="numpy"))


# ---- files that are not what they claim --------------------------------------------------------
def _small_model(tmp_path):
    net = Sequential(Conv2d(1, 2, 3), Flatten(), Linear(2 * 4 * 4, 3))
    net.input_shape = (1, 6, 6)
    net.bind("numpy", np.random.default_rng(0))
    return onnx.load(str(export(net, tmp_path / "small.onnx")))


def _refused(tmp_path, model_or_bytes, pattern):
    path = tmp_path / "bad.onnx"
    path.write_bytes(model_or_bytes if isinstance(model_or_bytes, bytes)
                     else model_or_bytes.SerializeToString())
    with pytest.raises(OnnxError, match=pattern):
        load(path, backend="numpy")


def test_hostile_files_are_refused_with_the_rule(tmp_path, monkeypatch):
    m = _small_model(tmp_path)
    _refused(tmp_path, m.SerializeToString()[:-7], "does not parse|no graph")
    _refused(tmp_path, b"\xff" * 64, "does not parse|no graph")
    short = onnx.load(str(tmp_path / "small.onnx"))
    short.graph.initializer[0].raw_data = short.graph.initializer[0].raw_data[:-4]
    _refused(tmp_path, short, r"'0.weight'.*declare 72 bytes.*holds 68")
    bad = onnx.load(str(tmp_path / "small.onnx"))
    w = onnx.numpy_helper.to_array(bad.graph.initializer[0]).copy()
    w.flat[0] = np.nan
    bad.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(w, "0.weight"))
    _refused(tmp_path, bad, r"'0.weight' holds NaN or inf")
    half = onnx.load(str(tmp_path / "small.onnx"))
    half.graph.initializer[0].data_type = onnx.TensorProto.FLOAT16
    _refused(tmp_path, half, "FLOAT16 is not one gpucnn reads")
    ext = onnx.load(str(tmp_path / "small.onnx"))
    ext.graph.initializer[0].data_location = onnx.TensorProto.EXTERNAL
    _refused(tmp_path, ext, "side file")
    old = onnx.load(str(tmp_path / "small.onnx"))
    old.opset_import[0].version = 11
    _refused(tmp_path, old, "opset 11; gpucnn imports opsets 13 to 23")
    monkeypatch.setattr(gpucnn.filerules, "ONNX_MAX_BYTES", 100)
    _refused(tmp_path, m, "more than the 100 bytes.*nothing was read")


# ---- graphs other programs write: built here with onnx.helper -----------------------------------
def _graph(tmp_path, nodes, inits, shape=(1, 6, 6), out_dims=("N", 3), opset=13):
    h = onnx.helper
    graph = h.make_graph(
        nodes, "g", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", *shape])],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, list(out_dims))],
        [onnx.numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    path = tmp_path / "g.onnx"
    path.write_bytes(h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
                     .SerializeToString())
    return path


def test_matmul_add_and_gemm_variants_become_linear_layers(tmp_path):
    h, rng = onnx.helper, np.random.default_rng(0)
    w1 = rng.standard_normal((36, 5)).astype(np.float32)  # MatMul: (in, out)
    b1 = rng.standard_normal(5).astype(np.float32)
    w2 = rng.standard_normal((5, 3)).astype(np.float32)  # Gemm transB=0, alpha 0.5, beta 2
    b2 = rng.standard_normal((1, 3)).astype(np.float32)
    path = _graph(tmp_path, [
        h.make_node("Flatten", ["x"], ["f"]),
        h.make_node("MatMul", ["f", "w1"], ["m"]), h.make_node("Add", ["m", "b1"], ["a"]),
        h.make_node("Relu", ["a"], ["r"]),
        h.make_node("Gemm", ["r", "w2", "b2"], ["y"], alpha=0.5, beta=2.0)],
        {"w1": w1, "b1": b1, "w2": w2, "b2": b2})
    net = load(path, backend="numpy")
    assert [type(l).__name__ for l in net.layers] == ["Flatten", "Linear", "ReLU", "Linear"]
    x = rng.standard_normal((2, 1, 6, 6)).astype(np.float32)
    assert _rel(_forward(net, x), _ort(path, x)) < REL
    assert net.onnx_names == {"1.weight": "w1", "1.bias": "b1", "3.weight": "w2",
                              "3.bias": "b2"}


@pytest.mark.parametrize("make, message", [
    (lambda h: [h.make_node("MaxPool", ["x"], ["p", "idx"], kernel_shape=[2, 2]),
                h.make_node("Cast", ["idx"], ["c"], to=1), h.make_node("Add", ["p", "c"], ["y"])],
     r"uses 'idx', the second output of node '#0' \(MaxPool\)"),
    (lambda h: [h.make_node("LRN", ["x"], ["y"], size=4)],
     r"'#0' \(LRN\): LRN of even size 4"),
    (lambda h: [h.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2],
                            pads=[1, 1, 1, 1], ceil_mode=1)],
     r"'#0' \(MaxPool\): gpucnn's MaxPool2d.*gives \(1, 4, 4\).*\(1, 5, 5\)"),
    (lambda h: [h.make_node("Sigmoid", ["x"], ["y"])], r"'#0' \(Sigmoid\) is not supported"),
    (lambda h: [h.make_node("Conv", ["x", "x"], ["y"])], r"'#0' \(Conv\): its weights"),
])
def test_graphs_gpucnn_cannot_build_exactly_are_refused_naming_the_node(make, message,
                                                                         tmp_path):
    path = _graph(tmp_path, make(onnx.helper), {}, shape=(1, 7, 7), out_dims=("N", 1, 7, 7))
    with pytest.raises(OnnxError, match=message):
        load(path, backend="numpy")
