"""``gpucnn predict`` (gpucnn/predict.py, gpucnn/saved.py): images written from Fashion-MNIST
test images are predicted as the in-process forward of those images predicts them; unreadable
files are reported and the others still predicted; the preprocessing comes from the
checkpoint (or, for older ones, the dataset's constants) and from an exported .onnx file."""
import json

import numpy as np
import pytest

from harness import stable_seed

Image = pytest.importorskip("PIL.Image")

from gpucnn.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from gpucnn.cli import main  # noqa: E402
from gpucnn.data import load_dataset  # noqa: E402
from gpucnn.data.preprocess import Preprocess  # noqa: E402
from gpucnn.predict import image_files, softmax  # noqa: E402
from gpucnn.saved import open_saved  # noqa: E402
from gpucnn.verify.source import build_copy, load_model_source  # noqa: E402


@pytest.fixture(scope="module")
def test_images():
    return load_dataset("fashion-mnist", "test", limit=400)


def _write_pngs(folder, ds, picks):
    folder.mkdir()
    for n, i in enumerate(picks):
        Image.fromarray(ds.pixels[i, 0]).save(folder / f"img{n:03d}.png")


def _in_process_probs(checkpoint, images):
    """Softmax of the checkpoint's model on normalised dataset images, in this process."""
    net = build_copy(load_model_source(checkpoint), "numpy", seed=0).eval()
    return softmax(net.forward(np.ascontiguousarray(images)))


def test_predict_gives_the_in_process_classes(lenet5_checkpoint, test_images, tmp_path, request,
                                              capsys):
    seed = stable_seed(request.node.nodeid)
    picks = np.random.default_rng(seed).choice(len(test_images), 24, replace=False)
    folder = tmp_path / "images"
    _write_pngs(folder, test_images, picks)
    (folder / "img010.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # corrupt
    (folder / "notes.txt").write_text("not an image")  # not an image file: not taken
    out = tmp_path / "p.json"
    rc = main(["predict", str(lenet5_checkpoint), str(folder), "--topk", "3", "--json", str(out),
               "--batch-size", "5", "--backend", "numpy"])
    captured = capsys.readouterr()
    assert rc == 1, f"seed {seed}"
    assert "img010.png: error: not an image Pillow can read" in captured.err
    assert "recorded in lenet5.npz" in captured.out
    results = json.loads(out.read_text())
    assert [r["file"] for r in results] == [str(folder / f"img{n:03d}.png") for n in range(24)]
    want = _in_process_probs(lenet5_checkpoint, test_images.images[picks])
    classes = test_images.classes
    for n, r in enumerate(results):
        if n == 10:
            assert set(r) == {"file", "error"}
            continue
        top = r["topk"]
        assert len(top) == 3 and [t["index"] for t in top] == list(np.argsort(-want[n])[:3])
        assert all(t["class"] == classes[t["index"]] for t in top)
        np.testing.assert_allclose([t["prob"] for t in top], np.sort(want[n])[::-1][:3],
                                   rtol=1e-5, err_msg=f"seed {seed}, image {n}")
    assert "23 image(s) predicted, 1 failed" in captured.out


def test_images_become_the_arrays_training_normalises(test_images):
    """A Fashion-MNIST test image written as a PNG becomes exactly the array training uses."""
    train = load_dataset("fashion-mnist", "train", limit=2)
    pre = Preprocess.of_dataset(train)
    assert pre.classes == test_images.classes and pre.input_shape == (1, 28, 28)
    import io
    for i in range(4):
        buf = io.BytesIO()
        Image.fromarray(test_images.pixels[i, 0]).save(buf, format="PNG")
        buf.seek(0)
        x = pre.normalize(pre.pixels(Image.open(buf).convert("L"))[None])
        assert np.array_equal(x[0], test_images.images[i])


def _without_data_record(src, dst):
    """``src`` as a checkpoint of gpucnn before it recorded the data (schema 4, "data" None)."""
    arrays, meta = load_checkpoint(src)
    meta = dict(meta, schema_version=4, data=None)
    save_checkpoint(dst, arrays, meta)
    return dst


def test_an_older_checkpoint_uses_its_datasets_constants(lenet5_checkpoint, test_images,
                                                         tmp_path, capsys):
    old = _without_data_record(lenet5_checkpoint, tmp_path / "old.npz")
    _write_pngs(tmp_path / "im", test_images, range(6))
    new_json, old_json = tmp_path / "new.json", tmp_path / "old.json"
    assert main(["predict", str(lenet5_checkpoint), str(tmp_path / "im"), "--json",
                 str(new_json)]) == 0
    assert main(["predict", str(old), str(tmp_path / "im"), "--json", str(old_json)]) == 0
    out = capsys.readouterr().out
    assert "old.npz records no preprocessing (written before gpucnn recorded it): " \
           "fashion-mnist's constants" in out
    assert json.loads(new_json.read_text()) == json.loads(old_json.read_text())
    # ... and it still resumes: its missing record is not compared (runmeta's upgrade)
    ck = tmp_path / "resumed.npz"
    ck.write_bytes(old.read_bytes())
    assert main(["train", "--checkpoint", str(ck), "--resume", "--epochs", "2", "--limit",
                 "64", "--test-limit", "64", "--batch-size", "32", "--backend", "numpy",
                 "--no-progress"]) == 0
    assert load_checkpoint(ck)[1]["data"]["classes"] == list(test_images.classes)


def test_an_exported_onnx_file_predicts_the_same(lenet5_checkpoint, test_images, tmp_path,
                                                 capsys):
    pytest.importorskip("onnx")
    model = tmp_path / "m.onnx"
    assert main(["export", str(lenet5_checkpoint), str(model)]) == 0
    _write_pngs(tmp_path / "im", test_images, range(8))
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["predict", str(model), str(tmp_path / "im"), "--json", str(a)]) == 0
    assert main(["predict", str(lenet5_checkpoint), str(tmp_path / "im"), "--json", str(b)]) == 0
    assert "recorded in m.onnx" in capsys.readouterr().out
    for x, y in zip(json.loads(a.read_text()), json.loads(b.read_text())):
        assert [t["index"] for t in x["topk"]] == [t["index"] for t in y["topk"]]
        assert [t["class"] for t in x["topk"]] == [t["class"] for t in y["topk"]]
        np.testing.assert_allclose([t["prob"] for t in x["topk"]],
                                   [t["prob"] for t in y["topk"]], rtol=1e-5)


def test_a_foreign_onnx_file_needs_no_record(tmp_path, request, capsys):
    """An .onnx file with no gpucnn metadata: class indices as names, pixels in [0, 1] unless
    --mean/--std; those are refused for a model that records its preprocessing."""
    pytest.importorskip("onnx")
    from gpucnn.models import lenet5
    from gpucnn.onnx import export
    net = lenet5(backend="numpy", seed=3)
    path = export(net, tmp_path / "foreign.onnx")
    rng = np.random.default_rng(stable_seed(request.node.nodeid))
    img = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "x.png")
    saved = open_saved(path)
    assert saved.preprocess.classes == tuple(str(i) for i in range(10))
    assert "pixels scaled to [0, 1], not normalised" in saved.how
    want = softmax(net.eval().forward(img[None, None].astype(np.float32) / 255))
    out = tmp_path / "f.json"
    assert main(["predict", str(path), str(tmp_path / "x.png"), "--topk", "10", "--json",
                 str(out)]) == 0
    got = {t["index"]: t["prob"] for t in json.loads(out.read_text())[0]["topk"]}
    np.testing.assert_allclose([got[i] for i in range(10)], want[0], rtol=1e-5)
    normalised = open_saved(path, mean=(0.5,), std=(0.25,))
    assert normalised.preprocess.mean == (0.5,) and "the given --mean/--std" in normalised.how
    with pytest.raises(ValueError, match="give 1 value"):
        open_saved(path, mean=(0.5, 0.5, 0.5), std=(1, 1, 1))


def test_mean_and_std_are_refused_where_recorded(lenet5_checkpoint, tmp_path, capsys):
    assert main(["predict", str(lenet5_checkpoint), str(tmp_path), "--mean", "0.5",
                 "--std", "0.5"]) == 2
    assert "they apply only to a model that records none" in capsys.readouterr().err


def test_dense_maps(lenet5_checkpoint, test_images, tmp_path, capsys):
    """--dense: a window of the input size gives a 1x1 map equal to the prediction; a larger
    image a map at the net's stride (LeNet-5: 4), each window's scores a distribution."""
    _write_pngs(tmp_path / "im", test_images, range(2))
    Image.fromarray(test_images.pixels[3, 0]).resize((60, 44)).save(tmp_path / "big.png")
    out = tmp_path / "d.json"
    assert main(["predict", str(lenet5_checkpoint), str(tmp_path / "im"), str(tmp_path / "big.png"),
                 "--dense", "--topk", "10", "--json", str(out)]) == 0
    assert "dense: 5x9 windows x 10 classes" in capsys.readouterr().out
    results = json.loads(out.read_text())
    for r in results[:2]:
        scores = np.asarray(r["dense"]["scores"])
        assert r["dense"]["shape"] == [10, 1, 1]
        np.testing.assert_allclose([scores[t["index"], 0, 0] for t in r["topk"]],
                                   [t["prob"] for t in r["topk"]], rtol=1e-5)
    big = np.asarray(results[2]["dense"]["scores"])
    assert big.shape == (10, (44 - 28) // 4 + 1, (60 - 28) // 4 + 1)
    np.testing.assert_allclose(big.sum(axis=0), 1.0, rtol=1e-9)


def test_image_files_are_sorted_and_not_recursive(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("b.PNG", "a.jpg", "c.txt", "sub/z.png"):
        (tmp_path / "d" / name).write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    got = image_files([tmp_path / "d", tmp_path / "empty", tmp_path / "gone.png"])
    assert got[:2] == [(str(tmp_path / "d" / "a.jpg"), None), (str(tmp_path / "d" / "b.PNG"), None)]
    assert got[2][0] == str(tmp_path / "empty") and "no image files" in got[2][1]
    assert got[3] == (str(tmp_path / "gone.png"), "no such file or folder")


def test_json_output_follows_the_output_rules(lenet5_checkpoint, test_images, tmp_path, capsys):
    _write_pngs(tmp_path / "im", test_images, range(1))
    precious = tmp_path / "notes.json"
    precious.write_text('{"mine": 1}')
    args = ["predict", str(lenet5_checkpoint), str(tmp_path / "im"), "--json"]
    assert main(args + [str(precious)]) == 2
    assert precious.read_text() == '{"mine": 1}' and "nothing was predicted" in capsys.readouterr().err
    out = tmp_path / "p.json"
    assert main(args + [str(out)]) == 0 and main(args + [str(out)]) == 0  # its own: replaced


def test_rgb_and_grey_images_take_the_models_channels(tmp_path, request):
    rng = np.random.default_rng(stable_seed(request.node.nodeid))
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), "RGB").save(tmp_path / "c.png")
    Image.fromarray(rng.integers(0, 256, (30, 40), dtype=np.uint8), "L").save(tmp_path / "g.png")
    rgb = Preprocess(("a", "b"), 3, (24, 24), (0.5,) * 3, (0.25,) * 3)
    grey = Preprocess(("a", "b"), 1, (24, 24), (0.5,), (0.25,))
    for pre in (rgb, grey):
        for name in ("c.png", "g.png"):
            px = pre.pixels(str(tmp_path / name))
            assert px.shape == (pre.channels, 24, 24) and px.dtype == np.uint8
    from gpucnn.data import DataError
    with pytest.raises(DataError, match="missing.png"):
        rgb.pixels(str(tmp_path / "missing.png"))


def test_a_users_own_list_of_files_is_not_replaced(lenet5_checkpoint, test_images, tmp_path,
                                                   capsys, monkeypatch):
    """Only gpucnn predict's own results are replaced without --overwrite: a list of
    {"file": ...} objects of another form is the user's; a results file larger than what is
    parsed to recognise it is recognised by its first bytes."""
    _write_pngs(tmp_path / "im", test_images, range(1))
    labels = tmp_path / "labels.json"
    labels.write_text('[{"file": "a.png", "label": 3}]')
    args = ["predict", str(lenet5_checkpoint), str(tmp_path / "im"), "--json"]
    assert main(args + [str(labels)]) == 2
    assert labels.read_text() == '[{"file": "a.png", "label": 3}]'
    assert "nothing was predicted" in capsys.readouterr().err
    out = tmp_path / "p.json"
    assert main(args + [str(out)]) == 0
    assert out.read_bytes().startswith(b'[\n{"file": ')
    from gpucnn import outputs
    monkeypatch.setattr(outputs, "_READ_LIMIT", 64)
    assert outputs.recognise(out)[0] == "predictions"
    assert outputs.recognise(labels)[0] is None


def _onnx_of(net, path, **metadata):
    from gpucnn.onnx import export
    return export(net, path, metadata=metadata)


def test_images_of_extreme_proportions_are_refused_not_allocated(lenet5_checkpoint, tmp_path,
                                                                 capsys):
    """1 x 100,000 pixels resized to cover 28 x 28 would be 28 x 2.8 million: refused per file
    before Pillow allocates it; the other files are still predicted."""
    Image.fromarray(np.zeros((1, 100_000), np.uint8)).save(tmp_path / "line.png")
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "ok.png")
    out = tmp_path / "p.json"
    assert main(["predict", str(lenet5_checkpoint), str(tmp_path / "line.png"),
                 str(tmp_path / "ok.png"), "--json", str(out)]) == 1
    results = json.loads(out.read_text())
    assert "proportions too extreme" in results[0]["error"] and "topk" in results[1]


def test_non_finite_outputs_are_an_error_per_file(tmp_path, capsys):
    pytest.importorskip("onnx")
    from gpucnn.models import lenet5
    net = lenet5(backend="numpy", seed=0)
    state = {k: np.full_like(v, 3e38) for k, v in net.state_dict().items()}
    net.load_state_dict(state)
    path = _onnx_of(net, tmp_path / "huge.onnx")
    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(tmp_path / "x.png")
    out = tmp_path / "p.json"
    assert main(["predict", str(path), str(tmp_path / "x.png"), "--json", str(out)]) == 1
    def refuse(constant):
        raise AssertionError(f"{constant} in the JSON")
    assert "not finite" in json.loads(out.read_text(), parse_constant=refuse)[0]["error"]


def test_a_dataset_that_does_not_fit_the_model_is_named(tmp_path, capsys):
    pytest.importorskip("onnx")
    from gpucnn.models import lenet5
    path = _onnx_of(lenet5(backend="numpy"), tmp_path / "m.onnx", **{"gpucnn.dataset": "cifar10"})
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "x.png")
    assert main(["predict", str(path), str(tmp_path / "x.png")]) == 2
    assert "says it was trained on cifar10 (3 channels, 10 classes), but its model takes 1" \
        in capsys.readouterr().err


def test_class_names_cannot_reach_the_terminal_as_escapes(tmp_path, capsys):
    pytest.importorskip("onnx")
    from gpucnn.models import lenet5
    names = [f"\x1b[31mred{i}\r" for i in range(10)]
    path = _onnx_of(lenet5(backend="numpy"), tmp_path / "m.onnx", class_names=json.dumps(names))
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "x.png")
    assert main(["predict", str(path), str(tmp_path / "x.png")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out and "\\x1b[31mred" in out


def test_an_older_kmnist_checkpoint_needs_its_statistics(lenet5_checkpoint, tmp_path, capsys):
    """kmnist's mean and std were computed from its training images: an old checkpoint (no
    record) cannot say them, so predict and show ask for --mean/--std and take them."""
    arrays, meta = load_checkpoint(lenet5_checkpoint)
    config = dict(meta["config"], dataset="kmnist")
    old = tmp_path / "old_kmnist.npz"
    save_checkpoint(old, arrays, dict(meta, schema_version=4, data=None, config=config))
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "x.png")
    assert main(["predict", str(old), str(tmp_path / "x.png")]) == 2
    assert "give --mean and --std" in capsys.readouterr().err
    assert main(["predict", str(old), str(tmp_path / "x.png"), "--mean", "0.2",
                 "--std", "0.3"]) == 0
    assert "trained on kmnist, normalised with the given --mean/--std" in capsys.readouterr().out
    pytest.importorskip("matplotlib")
    assert main(["show", str(old), "--activations", str(tmp_path / "x.png"), "--mean", "0.2",
                 "--std", "0.3", str(tmp_path / "maps.png")]) == 0


def test_a_precision_the_backend_lacks_is_named_not_blamed_on_the_file(
        lenet5_checkpoint, test_images, tmp_path, monkeypatch, capsys):
    """$GPUCNN_PRECISION=bf16 with --backend numpy: the error says the backend computes in
    fp32 only and where bf16 came from, not that the checkpoint does not fit its model."""
    Image.fromarray(test_images.pixels[0, 0]).save(tmp_path / "a.png")
    monkeypatch.setenv("GPUCNN_PRECISION", "bf16")
    assert main(["predict", str(lenet5_checkpoint), str(tmp_path / "a.png"),
                 "--backend", "numpy"]) == 2
    err = capsys.readouterr().err
    assert "computes in fp32 only" in err and "$GPUCNN_PRECISION" in err, err
    assert "does not fit" not in err, err
