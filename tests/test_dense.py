"""Dense scoring (gpucnn.nn.fully_convolutional): the classifier's Linear layers as
convolutions; one pass over a larger image equals the original net on every crop at the
net's stride (no padding), or on the interior windows of a padded net."""
import numpy as np
import pytest

from harness import stable_seed

from gpucnn.models import lenet5
from gpucnn.nn import (Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU, Sequential,
                       fully_convolutional)


def _run(net, x):
    B = net.backend
    return B.to_numpy(net.forward(B.asarray(np.ascontiguousarray(x, np.float32))))


def _unpadded(seed):
    """12x12 inputs, stride 2 (the pool's), no padding anywhere."""
    net = Sequential(Conv2d(2, 4, 3), ReLU(), MaxPool2d(2), Conv2d(4, 6, 3), ReLU(),
                     Flatten(), Dropout(0.5), Linear(6 * 3 * 3, 16), ReLU(), Linear(16, 5))
    net.input_shape = (2, 12, 12)
    return net.bind("numpy", np.random.default_rng(seed)).eval()


def _close(a, b):
    return np.abs(a - b).max() <= 1e-5 * np.abs(b).max()


def test_on_the_training_size_the_score_map_is_the_logits(request):
    rng = np.random.default_rng(stable_seed(request.node.nodeid))
    net = _unpadded(int(rng.integers(1 << 30)))
    before = {k: v.copy() for k, v in net.state_dict().items()}
    dense = fully_convolutional(net)
    x = rng.standard_normal((3, 2, 12, 12))
    y = _run(dense, x)
    assert y.shape == (3, 5, 1, 1) and _close(y[:, :, 0, 0], _run(net, x))
    assert [type(l).__name__ for l in dense.layers][-4:] == ["Dropout", "Conv2d", "ReLU",
                                                             "Conv2d"]
    assert all(np.array_equal(v, net.state_dict()[k]) for k, v in before.items())  # unchanged
    assert dense.backend is net.backend


def test_a_score_map_equals_the_net_on_every_crop(request):
    rng = np.random.default_rng(stable_seed(request.node.nodeid))
    net = _unpadded(int(rng.integers(1 << 30)))
    x = rng.standard_normal((2, 2, 18, 21))
    y = _run(fully_convolutional(net), x)
    assert y.shape == (2, 5, 4, 5)  # (18 - 12) / 2 + 1 by (21 - 12) // 2 + 1 windows
    for i in range(4):
        for j in range(5):
            crop = x[:, :, 2 * i:2 * i + 12, 2 * j:2 * j + 12]
            assert _close(y[:, :, i, j], _run(net, crop)), (i, j)


def test_a_padded_net_scores_interior_windows_like_the_net(request):
    """LeNet-5 pads its first conv by 2: a window equals the net on its crop where the crop's
    surroundings are zeros, as the padding the net adds is; elsewhere it sees the image."""
    rng = np.random.default_rng(stable_seed(request.node.nodeid))
    net = lenet5(backend="numpy", seed=int(rng.integers(1 << 30))).eval()
    patch = rng.standard_normal((1, 1, 28, 28))
    image = np.zeros((1, 1, 48, 56))
    image[:, :, 8:36, 12:40] = patch  # at (8, 12): window (2, 3) at LeNet's stride of 4
    y = _run(fully_convolutional(net), image)
    assert y.shape == (1, 10, 6, 8)
    assert _close(y[:, :, 2, 3], _run(net, patch))
    # window (1, 2) cuts the patch: beyond its crop lie patch pixels, not the net's zeros
    assert not _close(y[:, :, 1, 2], _run(net, image[:, :, 4:32, 8:36]))


def test_what_has_no_convolutional_form_is_refused():
    net = Sequential(Flatten(), Linear(4, 2))
    net.input_shape = (4,)
    net.bind("numpy", np.random.default_rng(0))
    with pytest.raises(ValueError, match="flattens a"):
        fully_convolutional(net)
