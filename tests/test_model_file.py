"""Model files (``--model net.json``) and VGG (issue 21 parts 5, 6): the format, named errors for
bad files read under the hostile-input rules, checkpoints that rebuild the same net, and VGG's
parameter counts and geometry."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from gpucnn import filerules
from gpucnn.checkpoint import CheckpointError, open_checkpoint
from gpucnn.cli import main
from gpucnn.modelfile import ModelFileError, load_net, read_model_file
from gpucnn.models import build_model, describe_model, parameter_count
from gpucnn.train import TrainConfig, Trainer, upgrade_metadata

EXAMPLE = {"input": [1, 28, 28], "layers": [
    ["conv", {"out": 6, "kernel_size": 5, "padding": 2}], ["relu"],
    ["maxpool", {"kernel_size": 2}], ["flatten"], ["linear", {"out": 10}]]}


def _write(tmp_path, desc, name="net.json"):
    path = tmp_path / name
    path.write_text(desc if isinstance(desc, str) else json.dumps(desc))
    return str(path)


def test_the_readme_example_builds_and_summarises(tmp_path, capsys):
    path = _write(tmp_path, EXAMPLE)
    kwargs, shape = load_net(path)
    net = build_model("sequential", backend="numpy", input_shape=shape, **kwargs)
    assert parameter_count(net) == (6 * 25 + 6) + (6 * 14 * 14 * 10 + 10)
    assert net.output_shape((1, 28, 28)) == (10,)
    assert net.config == {"name": "sequential", "kwargs": kwargs, "input_shape": [1, 28, 28]}
    assert main(["summary", path]) == 0
    out = capsys.readouterr().out
    assert "Conv2d(1->6, 5x5, pad 2)" in out and "Linear(1176->10)" in out
    # every layer type, options under PyTorch's names
    full = {"input": [3, 32, 32], "layers": [
        ["conv", {"out": 8, "kernel_size": [3, 3], "stride": 1, "padding": "same",
                  "dilation": 1, "groups": 1, "bias": False}], ["relu"],
        ["lrn", {"size": 3, "alpha": 1e-4, "beta": 0.75, "k": 2.0}],
        ["maxpool", {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}],
        ["avgpool", {"kernel_size": 2, "count_include_pad": False}],
        ["lppool", {"norm_type": 2, "kernel_size": 2}],
        ["flatten"], ["dropout", {"p": 0.3}], ["linear", {"out": 5, "bias": True}]]}
    kwargs, shape = load_net(_write(tmp_path, full))
    net = describe_model("sequential", input_shape=shape, **kwargs)
    assert net.output_shape((3, 32, 32)) == (5,) and net.layers[0].weight_shape == (8, 3, 3, 3)
    assert not net.layers[0].use_bias and net.layers[2].args == (3, 1e-4, 0.75, 2.0)


@pytest.mark.parametrize("desc, message", [
    ("{not json", r"not valid JSON text"),
    ('{"input": [1, 28, 28], "input": [1, 28, 28], "layers": []}', r"the key 'input' twice"),
    ('{"input": [1, 28, NaN], "layers": []}', r"NaN \(only finite numbers\)"),
    ("[" * 100 + "]" * 100, r"nested 100 levels deep"),
    ([], r"a model file is a JSON object"),
    ({"input": [1, 28, 28]}, r"no 'layers'"),
    ({"input": [1, 28, 28], "layers": [], "name": "x"}, r"unknown key 'name'"),
    ({"input": [1, 28], "layers": [["relu"]]}, r"'input' is \[1, 28\]: it must be \[C, H, W\]"),
    ({"input": [1, 28, 28], "layers": []}, r"'layers' is \[\]: it must be a non-empty list"),
    ({"input": [1, 28, 28], "layers": [["relu"], "conv"]},
     r"layer 1 is 'conv': it must be a list \[type\] or \[type, \{options\}\]"),
    ({"input": [1, 28, 28], "layers": [["relu"], ["pool"]]},
     r"layer 1 'type' is 'pool': it must be one of conv, maxpool, avgpool, lppool, relu, lrn, "
     r"dropout, flatten, linear"),
    ({"input": [1, 28, 28], "layers": [["conv", {"out": 6}]]},
     r"layer 0 \(conv\) 'kernel_size' missing: it must be given \(an int in \[1, 65536\]"),
    ({"input": [1, 28, 28], "layers": [["conv", {"out": 6, "kernel_size": 3,
                                                 "out_channels": 6}]]},
     r"layer 0 \(conv\) 'out_channels' is 6: it must be absent: conv takes the options: out, "
     r"kernel_size, stride, padding, dilation, groups, bias"),
    ({"input": [1, 28, 28], "layers": [["conv", {"out": 6, "kernel_size": 3, "stride": 0}]]},
     r"layer 0 \(conv\) 'stride' is 0: it must be an int in \[1, 65536\] or a list of 2"),
    ({"input": [1, 28, 28], "layers": [["conv", {"out": 6.5, "kernel_size": 3}]]},
     r"layer 0 \(conv\) 'out' is 6.5: it must be an int in \[1, 65536\]"),
    ({"input": [1, 28, 28], "layers": [["relu"], ["dropout", {"p": 1.0}]]},
     r"layer 1 \(dropout\) 'p' is 1.0: it must be a finite number >= 0 and < 1"),
    ({"input": [1, 28, 28], "layers": [["relu", {"inplace": True}]]},
     r"layer 0 \(relu\) 'inplace' is True: it must be absent: relu takes the options: none"),
    ({"input": [1, 28, 28], "layers": [["linear", {"out": 10}]]},
     r"layer 0 \(linear\) at its input 1x28x28: takes features, .* put \[\"flatten\"\] before"),
    ({"input": [1, 28, 28], "layers": [["maxpool", {"kernel_size": 2}]] * 6},
     r"layer 4 \(maxpool\) at its input 1x1x1: max_pool2d: output height would be 0"),
    ({"input": [1, 28, 28], "layers": [["conv", {"out": 4, "kernel_size": 3, "groups": 3}]]},
     r"layer 0 \(conv\) at its input 1x28x28: Conv2d: groups=3 must divide"),
    ({"input": [1, 28, 28], "layers": [["relu"]] * 1001}, r"1001 layers, more than the 1000"),
    ({"input": [3, 4096, 4096], "layers": [["flatten"], ["linear", {"out": 65536}]]},
     r"layer 1 \(linear\): the net holds more than 1,073,741,824 parameters"),
])
def test_bad_model_files_get_named_errors(tmp_path, capsys, desc, message):
    path = _write(tmp_path, desc)
    with pytest.raises(ModelFileError, match=message):
        load_net(path)
    assert main(["summary", path]) == 2  # one line, never a traceback
    err = capsys.readouterr().err
    assert err.startswith(f"gpucnn summary: error: {path}") and "Traceback" not in err


def test_model_files_are_bounded_before_they_are_parsed(tmp_path):
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (filerules.netfile.NET_MAX_BYTES + 1))
    with pytest.raises(ModelFileError, match=r"1,048,577 bytes, more than the 1.0 MiB a model "
                                             r"file may have"):
        read_model_file(big)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)  # would block an open: refused before it
    with pytest.raises(ModelFileError, match="not a regular file"):
        read_model_file(fifo)
    with pytest.raises(ModelFileError, match="no such model file"):
        read_model_file(tmp_path / "missing.json")
    os.mkdir(tmp_path / "dir.json")
    with pytest.raises(ModelFileError, match="a directory"):
        read_model_file(tmp_path / "dir.json")


def test_checkpoints_store_the_description_and_rebuild_the_same_net(tmp_path, capsys):
    path = _write(tmp_path, dict(EXAMPLE, layers=EXAMPLE["layers"][:3] + [
        ["dropout", {"p": 0.25}]] + EXAMPLE["layers"][3:]))
    ck = str(tmp_path / "ck.npz")

    def cfg(**kw):
        return TrainConfig(**{**dict(model=path, dataset="fashion-mnist", epochs=1,
                                     batch_size=32, limit=96, test_limit=32, backend="numpy",
                                     progress=False, checkpoint=ck), **kw})

    tr = Trainer(cfg())
    tr.fit()
    with open_checkpoint(ck) as c:
        meta = upgrade_metadata(c.metadata, ck)
    assert meta["model"]["name"] == "sequential"
    assert meta["model"]["kwargs"]["layers"][3] == ["dropout", {"p": 0.25}]
    # verify rebuilds it from the checkpoint alone (the file is not needed)
    from gpucnn.verify.source import build_copy, load_model_source
    os.rename(path, path + ".moved")
    source = load_model_source(ck)
    copy = build_copy(source, "numpy", seed=1)
    for name, p in copy.named_parameters():
        np.testing.assert_array_equal(p.data, tr.model.state_dict()[name])
    # resume with a changed file is refused, naming what differs
    desc = json.loads(open(path + ".moved").read())
    desc["layers"][0][1]["out"] = 8
    _write(tmp_path, desc)
    with pytest.raises(CheckpointError, match=r"layers"):
        Trainer(cfg(resume=True, epochs=2)).load(ck)
    # a checkpoint whose recorded layers are not a net is refused by the schema
    bad = dict(meta, model=dict(meta["model"], kwargs={"layers": [["conv", {"out": 0, "kernel_size": 3}]]}))
    with pytest.raises(CheckpointError, match=r"'model.kwargs.layers'.*layer 0 \(conv\) 'out'"):
        filerules.check_metadata(bad, ck, CheckpointError)


def test_model_file_classes_must_match_the_data(tmp_path, capsys):
    path = _write(tmp_path, dict(EXAMPLE, layers=EXAMPLE["layers"][:-1] + [
        ["linear", {"out": 7}]]))
    assert main(["train", "--model", path, "--backend", "numpy", "--limit", "8",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "gives 7 outputs, the data has 10 classes" in err


# ---- VGG ---------------------------------------------------------------------------------
def test_vgg_parameter_counts_and_input_sized_classifier(capsys):
    assert parameter_count(describe_model("vgg11")) == 132_863_336
    assert parameter_count(describe_model("vgg16")) == 138_357_544
    small = describe_model("vgg16", input_shape=(3, 32, 32), num_classes=10)
    assert small.layers[-7].weight_shape == (4096, 512)  # 512x1x1 features at 32x32
    assert main(["summary", "vgg16"]) == 0
    assert "total: 138,357,544 parameters" in capsys.readouterr().out
    assert main(["summary", "vgg16", "--input", "3,32,32"]) == 0
    assert "512x1x1" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"vgg11 at input 3x16x16: layer 20 \(MaxPool2d.*\) "
                                         r"cannot take its 512x1x1 input"):
        describe_model("vgg11", input_shape=(3, 16, 16))
    assert main(["summary", "lenet5", "--input", "3,32,32"]) == 0  # sized from the input
    assert "Linear(576->120)" in capsys.readouterr().out


def test_train_vgg11_at_64x64_on_a_folder(tmp_path, rng):
    for c in ("a", "b"):
        for i in range(3):
            os.makedirs(tmp_path / "d" / "train" / c, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(
                tmp_path / "d" / "train" / c / f"{i}.jpg")
    metrics = tmp_path / "m.json"
    assert main(["train", "--model", "vgg11", "--input", "3,64,64", "--dataset", "folder",
                 "--data-dir", str(tmp_path / "d"), "--val-split", "0.34", "--batch-size", "2",
                 "--lr", "0.001", "--backend", "numpy", "--no-progress",
                 "--metrics-json", str(metrics)]) == 0
    m = json.loads(metrics.read_text())
    assert m["input_shape"] == [3, 64, 64] and m["data"]["classes"] == ["a", "b"]
    assert len(m["epochs"]) == 1 and np.isfinite(m["epochs"][0]["train_loss"])
