"""``gpucnn show`` (gpucnn/pictures.py): filter grids and feature maps of a trained checkpoint
or an ONNX file, written as pictures under the output rules."""

import numpy as np
import pytest

from harness import stable_seed

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

from gpucnn.cli import main  # noqa: E402
from gpucnn.models import alexnet_cifar  # noqa: E402
from gpucnn.pictures import conv_activations, filter_grid  # noqa: E402


def _png(path, rng, size=(28, 28), mode="L"):
    shape = size[::-1] + ((3,) if mode == "RGB" else ())
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


def test_filter_grids_tile_every_filter():
    rgb = filter_grid(np.random.default_rng(0).standard_normal((64, 3, 5, 5)))
    assert rgb.shape == (8 * 6 - 1, 8 * 6 - 1, 3)  # 8x8 filters of 5x5, 1 pixel apart
    grey = filter_grid(np.random.default_rng(0).standard_normal((16, 6, 5, 5)))
    assert grey.shape == (4 * 6 - 1, 4 * 6 - 1)
    assert np.nanmin(grey) == 0 and np.nanmax(grey) == 1


def test_activations_are_each_convs_output(request):
    net = alexnet_cifar(backend="numpy", seed=1)
    x = np.random.default_rng(stable_seed(request.node.nodeid)).standard_normal(
        (3, 32, 32)).astype(np.float32)
    maps = conv_activations(net, x)
    assert [m.shape for _, _, m in maps] == [(64, 15, 15), (192, 7, 7), (384, 7, 7),
                                             (256, 7, 7), (256, 3, 3)]
    assert "max-pool" in maps[0][1] and net.training  # fused conv; the mode is restored
    y = net.eval().forward(net.backend.asarray(x[None]))
    assert y.shape == (1, 10)


def test_gpucnn_show_writes_filters_and_feature_maps(lenet5_checkpoint, request, tmp_path, capsys):
    rng = np.random.default_rng(stable_seed(request.node.nodeid))
    image = _png(tmp_path / "shirt.png", rng, size=(40, 30))
    filters, maps = tmp_path / "filters.png", tmp_path / "maps.png"
    assert main(["show", str(lenet5_checkpoint), "--filters", "0", str(filters)]) == 0
    assert main(["show", str(lenet5_checkpoint), "--activations", str(image), str(maps)]) == 0
    out = capsys.readouterr().out
    assert "preprocessing: recorded in lenet5.npz: grey, 28x28 (HxW; other sizes resized" in out
    for p in (filters, maps):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 2000
        with Image.open(p) as im:
            assert min(im.size) > 100
    assert main(["show", str(lenet5_checkpoint), "--filters", "0", str(filters)]) == 0  # its own
    assert main(["show", str(lenet5_checkpoint), "--filters", "1", str(tmp_path / "r.png")]) == 2
    assert "its Conv2d layers are [0, 3]" in capsys.readouterr().err


def test_a_corrupt_image_is_a_clear_error(lenet5_checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    assert main(["show", str(lenet5_checkpoint), "--activations", str(bad),
                 str(tmp_path / "m.png")]) == 2
    err = capsys.readouterr().err
    assert "bad.png: not an image Pillow can read" in err and not (tmp_path / "m.png").exists()
