"""Batches gathered from uint8 pixels (gpucnn/ops/data.py, kernels/data.cu): the kernels (emu,
three thread orders, poisoned outputs) equal today's host batches bit for bit — the float32
images load_dataset normalises, and random_crop_flip's augmentation of them — on a real
Fashion-MNIST batch, random pixels and synthetic CIFAR-10 files."""
from pathlib import Path

import numpy as np
import pytest

from gpucnn.data import (batch_rng, dataset_info, epoch_permutation, load_dataset, normalize,
                         random_crop_flip)
from gpucnn.data.datasets import AUGMENT_PAD, Dataset
from gpucnn.data.loader import crop_flip_draw
from gpucnn.ops import data as ops_data
from gpucnn.testing import write_cifar10

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def _dataset(rng, n, shape, mean, std):
    pixels = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    info = dataset_info("cifar10" if shape[0] == 3 else "fashion-mnist")
    return Dataset(images=normalize(pixels, mean, std), labels=np.zeros(n, np.int32),
                   info=info, split="train", mean=mean, std=std, pixels=pixels)


def _table(ds):
    return ops_data.pixel_table(ds.pixel_values(), ds.padding_value())


def _same_bits(a, b):
    """Bit-identical float32 arrays (NaN included: equal bits, not equal values)."""
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
    np.testing.assert_array_equal(a.view(np.int32), b.view(np.int32))


def test_the_table_is_normalize_and_the_padding(rng):
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    ds = _dataset(rng, 1, (3, 32, 32), mean, std)
    table = _table(ds)
    assert table.shape == (3, ops_data.TABLE_COLUMNS) and table.dtype == np.float32
    for v in (0, 1, 127, 254, 255):
        one = np.full((1, 3, 1, 1), v, np.uint8)
        _same_bits(table[:, v], normalize(one, mean, std).reshape(3))
    # the fill random_crop_flip pads normalised images with, as it stores it (float32)
    _same_bits(table[:, ops_data.PADDING], np.asarray(ds.padding_value(), np.float32))


def test_gather_normalize_on_a_real_fashion_mnist_batch(device_backend):
    """The first batch of epoch 0 of the real training split, as the trainer draws it."""
    B = device_backend
    ds = load_dataset("fashion-mnist", "train", data_dir=FASHION_DIR, limit=4096)
    idx = epoch_permutation(len(ds), 0, 0)[:128].astype(np.int32)
    out = B.gather_normalize(B.asarray(ds.pixels, dtype=np.uint8), B.asarray(idx),
                             B.asarray(_table(ds)))
    _same_bits(B.to_numpy(out), ds.images[idx])


@pytest.mark.parametrize("shape,batch", [((1, 28, 28), 37), ((3, 32, 32), 16), ((3, 5, 3), 1)])
def test_gather_normalize_random_pixels(device_backend, rng, shape, batch):
    B = device_backend
    mean = tuple(rng.uniform(0.1, 0.6, shape[0]))
    std = tuple(rng.uniform(0.2, 0.4, shape[0]))
    ds = _dataset(rng, 50, shape, mean, std)
    idx = rng.integers(0, 50, size=batch).astype(np.int32)  # repeats too
    table = _table(ds)
    out = B.to_numpy(B.gather_normalize(B.asarray(ds.pixels, dtype=np.uint8),
                                        B.asarray(idx), B.asarray(table)))
    _same_bits(out, ds.images[idx])
    _same_bits(ops_data.gather_reference(ds.pixels, idx, table), ds.images[idx])


def test_an_invalid_index_gives_a_nan_image_everywhere(device_backend, numpy_backend, rng):
    ds = _dataset(rng, 6, (1, 4, 4), (0.3,), (0.3,))
    idx = np.array([2, -1, 6, 5], np.int32)
    table = _table(ds)
    for B in (device_backend, numpy_backend):
        out = B.to_numpy(B.gather_normalize(B.asarray(ds.pixels, dtype=np.uint8),
                                            B.asarray(idx), B.asarray(table)))
        assert np.isnan(out[1:3]).all()
        _same_bits(out[[0, 3]], ds.images[[2, 5]])


def test_gather_crop_flip_is_the_host_augmentation(device_backend, tmp_path, rng):
    """Every batch of an epoch of synthetic CIFAR-10: the kernel, from the uint8 pixels and
    crops drawn as the host path draws them, equals Dataset.batches(augment=True)."""
    B = device_backend
    ds = load_dataset("cifar10", "train", data_dir=write_cifar10(tmp_path, rng, 7))
    seed, epoch, bs = 5, 2, 8
    pixels, table = B.asarray(ds.pixels, dtype=np.uint8), B.asarray(_table(ds))
    order = epoch_permutation(len(ds), seed, epoch).astype(np.int32)
    host = list(ds.batches(bs, True, seed, epoch, augment=True))
    assert len(host) == 5  # 35 images: the last batch is partial
    for b, (x, _) in enumerate(host):
        idx = order[b * bs:(b + 1) * bs]
        crops = ops_data.pack_crops(*crop_flip_draw(batch_rng(seed, epoch, b), len(idx),
                                                    AUGMENT_PAD))
        out = B.gather_crop_flip(pixels, B.asarray(idx), B.asarray(crops), table, AUGMENT_PAD)
        _same_bits(B.to_numpy(out), x)


@pytest.mark.parametrize("pad", [0, 1, 3])
def test_gather_crop_flip_random_crops(device_backend, rng, pad):
    """Random offsets in [0, 2 pad] and flips on random images (a pad larger than the
    image too): kernel == reference == random_crop_flip of the normalised images, which
    draws the same crops from a generator in the same state."""
    B = device_backend
    ds = _dataset(rng, 9, (3, 6, 2), (0.5, 0.4, 0.3), (0.2, 0.3, 0.25))
    idx = rng.integers(0, 9, size=40).astype(np.int32)
    table = _table(ds)
    seed = int(rng.integers(1 << 30))
    crops = ops_data.pack_crops(*crop_flip_draw(np.random.default_rng(seed), 40, pad))
    want = random_crop_flip(ds.images[idx], np.random.default_rng(seed), pad,
                            ds.padding_value())
    out = B.to_numpy(B.gather_crop_flip(B.asarray(ds.pixels, dtype=np.uint8), B.asarray(idx),
                                        B.asarray(crops), B.asarray(table), pad))
    _same_bits(out, want)
    _same_bits(ops_data.crop_flip_reference(ds.pixels, idx, crops, table, pad), want)


def test_argument_checks(emu_or_numpy, rng):
    B = emu_or_numpy
    ds = _dataset(rng, 4, (1, 3, 3), (0.3,), (0.3,))
    pixels, table = B.asarray(ds.pixels, dtype=np.uint8), B.asarray(_table(ds))
    idx = B.asarray(np.array([0, 1], np.int32))
    with pytest.raises(TypeError, match="pixels must have dtype uint8"):
        B.gather_normalize(B.asarray(ds.images), idx, table)
    with pytest.raises(TypeError, match="index must have dtype int32"):
        B.gather_normalize(pixels, B.asarray(np.array([0, 1]), dtype=np.int64), table)
    with pytest.raises(ValueError, match=r"table must have shape \(1, 257\)"):
        B.gather_normalize(pixels, idx, B.asarray(np.zeros((1, 256), np.float32)))
    with pytest.raises(ValueError, match="at least one image"):
        B.gather_normalize(pixels, B.asarray(np.zeros(0, np.int32)), table)
    crops = B.asarray(np.zeros((2, 3), np.int32))
    with pytest.raises(ValueError, match=r"crops must have shape \(2, 3\)"):
        B.gather_crop_flip(pixels, idx, B.asarray(np.zeros((3, 3), np.int32)), table, 1)
    with pytest.raises(ValueError, match="pad must be an integer >= 0"):
        B.gather_crop_flip(pixels, idx, crops, table, -1)


@pytest.fixture(params=["emu", "numpy"])
def emu_or_numpy(request, device_forward, numpy_backend):
    return device_forward if request.param == "emu" else numpy_backend
