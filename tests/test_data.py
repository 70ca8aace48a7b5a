"""Tests for gpucnn.data: IDX and CIFAR-10 readers, search order, batching, augmentation."""

import dataclasses
import gzip
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from gpucnn.data import (DataError, channel_stats, dataset_info, encode_idx, epoch_permutation,
                         find_dataset, iterate_batches, load_dataset, random_crop_flip,
                         read_cifar_batch, read_cifar_batches, read_idx, read_idx_images,
                         read_idx_labels, read_idx_pair, search_locations)
from gpucnn.data import datasets as datasets_mod

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------- helpers

def make_images(rng, n, h=28, w=28):
    return rng.integers(0, 256, size=(n, h, w), dtype=np.uint8)


def make_labels(rng, n, k=10):
    return rng.integers(0, k, size=n, dtype=np.uint8)


def write(path, data, gz):
    path = Path(str(path) + ".gz") if gz else Path(path)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_idx_split(directory, rng, n, split="train", gz=True):
    directory.mkdir(parents=True, exist_ok=True)
    prefix = "train" if split == "train" else "t10k"
    images, labels = make_images(rng, n), make_labels(rng, n)
    write(directory / f"{prefix}-images-idx3-ubyte", encode_idx(images), gz)
    write(directory / f"{prefix}-labels-idx1-ubyte", encode_idx(labels), gz)
    return images, labels


def cifar_bytes(images, labels):
    return np.concatenate([labels[:, None], images.reshape(len(labels), -1)], axis=1).tobytes()


@pytest.fixture
def no_env(monkeypatch, tmp_path):
    """Isolate the search from the machine: no $GPUCNN_DATA, an empty cache, no system dirs."""
    monkeypatch.delenv("GPUCNN_DATA", raising=False)
    cache = tmp_path / "cache-root"
    monkeypatch.setattr(datasets_mod, "user_cache_root", lambda: cache)
    return cache


# ---------------------------------------------------------------- IDX reader

@pytest.mark.parametrize("gz", [True, False])
def test_idx_valid(tmp_path, rng, gz):
    images, labels = make_images(rng, 7, 5, 4), make_labels(rng, 7)
    ip = write(tmp_path / "img-idx3-ubyte", encode_idx(images), gz)
    lp = write(tmp_path / "lab-idx1-ubyte", encode_idx(labels), gz)
    got_i, got_l = read_idx_pair(ip, lp)
    assert got_i.dtype == np.uint8 and got_i.shape == (7, 5, 4)
    np.testing.assert_array_equal(got_i, images)
    np.testing.assert_array_equal(got_l, labels)


def test_idx_gzip_detected_by_content_not_name(tmp_path, rng):
    images = make_images(rng, 3)
    p = tmp_path / "images-no-gz-suffix"
    p.write_bytes(gzip.compress(encode_idx(images)))
    np.testing.assert_array_equal(read_idx_images(p), images)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_truncated(tmp_path, rng, gz):
    data = encode_idx(make_images(rng, 10))
    p = write(tmp_path / "train-images-idx3-ubyte", data[:16 + 1000], gz)
    with pytest.raises(DataError) as e:
        read_idx_images(p)
    msg = str(e.value)
    assert p.name in msg and "truncated" in msg
    assert "10 images of 28x28 = 7840 bytes" in msg and "1000" in msg


def test_idx_trailing_bytes(tmp_path, rng):
    p = write(tmp_path / "x-idx1-ubyte", encode_idx(make_labels(rng, 5)) + b"\0\0", False)
    with pytest.raises(DataError, match="5 labels = 5 bytes, file has 7"):
        read_idx_labels(p)


def test_idx_truncated_header(tmp_path):
    p = write(tmp_path / "short", bytes([0, 0, 8, 3, 0, 0]), False)
    with pytest.raises(DataError, match="short.*truncated"):
        read_idx_images(p)


def test_idx_wrong_magic(tmp_path, rng):
    labels_file = write(tmp_path / "labels-idx1-ubyte", encode_idx(make_labels(rng, 4)), True)
    with pytest.raises(DataError) as e:
        read_idx_images(labels_file)
    msg = str(e.value)
    assert labels_file.name in msg
    assert "bad magic 0x00000801, expected 0x00000803 (an IDX image file)" in msg
    garbage = write(tmp_path / "garbage", b"GIF89a" + bytes(100), False)
    with pytest.raises(DataError, match="garbage.*bad magic 0x47494638"):
        read_idx_labels(garbage)


def test_idx_wrong_dtype_byte(tmp_path, rng):
    data = bytearray(encode_idx(make_images(rng, 2)))
    data[2] = 0x0D  # IDX float
    p = write(tmp_path / "float-images", bytes(data), False)
    with pytest.raises(DataError) as e:
        read_idx_images(p)
    assert "float-images" in str(e.value) and "0x0d" in str(e.value) \
        and "unsigned byte" in str(e.value)


def test_idx_count_mismatch(tmp_path, rng):
    ip = write(tmp_path / "i-idx3-ubyte", encode_idx(make_images(rng, 6)), True)
    lp = write(tmp_path / "l-idx1-ubyte", encode_idx(make_labels(rng, 5)), True)
    with pytest.raises(DataError) as e:
        read_idx_pair(ip, lp)
    assert "6 images" in str(e.value) and "5 labels" in str(e.value)
    assert ip.name in str(e.value) and lp.name in str(e.value)


def test_idx_label_out_of_range(tmp_path):
    lp = write(tmp_path / "l-idx1-ubyte", encode_idx(np.array([1, 2, 10, 3], np.uint8)), False)
    with pytest.raises(DataError, match="l-idx1-ubyte.*label 10 at index 2"):
        read_idx_labels(lp)


@pytest.mark.parametrize("damage", ["cut", "flip", "crc"])
def test_idx_corrupt_gzip(tmp_path, rng, damage):
    blob = bytearray(gzip.compress(encode_idx(make_images(rng, 20))))
    if damage == "cut":
        blob = blob[: len(blob) // 2]
    elif damage == "flip":
        for i in range(20, 60):
            blob[i] ^= 0xA5
    else:
        blob[-8] ^= 0xFF  # CRC32 in the trailer
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(bytes(blob))
    with pytest.raises(DataError) as e:
        read_idx_images(p)
    assert "train-images-idx3-ubyte.gz" in str(e.value) and "gzip" in str(e.value)


def test_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.gz: no such file"):
        read_idx_images(tmp_path / "nope.gz")


# ---------------------------------------------------------------- CIFAR-10 reader

def test_cifar_valid(tmp_path, rng):
    images = rng.integers(0, 256, size=(5, 3, 32, 32), dtype=np.uint8)
    labels = make_labels(rng, 5)
    p = tmp_path / "data_batch_1.bin"
    p.write_bytes(cifar_bytes(images, labels))
    got_i, got_l = read_cifar_batch(p)
    np.testing.assert_array_equal(got_i, images)
    np.testing.assert_array_equal(got_l, labels)
    # Channel planes: bytes 1..1024 of a record are red, row-major.
    raw = np.frombuffer(p.read_bytes(), np.uint8)
    np.testing.assert_array_equal(got_i[0, 0].ravel(), raw[1:1025])
    q = tmp_path / "data_batch_2.bin"
    q.write_bytes(cifar_bytes(images[:2], labels[:2]))
    both_i, both_l = read_cifar_batches([p, q])
    assert both_i.shape == (7, 3, 32, 32)
    assert both_l.tolist() == labels.tolist() + labels[:2].tolist()


def test_cifar_truncated(tmp_path, rng):
    images = rng.integers(0, 256, size=(3, 3, 32, 32), dtype=np.uint8)
    p = tmp_path / "test_batch.bin"
    p.write_bytes(cifar_bytes(images, make_labels(rng, 3))[:-100])
    with pytest.raises(DataError) as e:
        read_cifar_batch(p)
    assert "test_batch.bin" in str(e.value) and "3073" in str(e.value)
    assert str(3 * 3073 - 100) in str(e.value)


def test_cifar_label_out_of_range(tmp_path, rng):
    images = rng.integers(0, 256, size=(4, 3, 32, 32), dtype=np.uint8)
    labels = np.array([0, 9, 12, 1], np.uint8)
    p = tmp_path / "data_batch_3.bin"
    p.write_bytes(cifar_bytes(images, labels))
    with pytest.raises(DataError, match="data_batch_3.bin.*label 12 at index 2"):
        read_cifar_batch(p)


def test_cifar_pickle_version_refused(tmp_path):
    p = tmp_path / "data_batch_1"
    p.write_bytes(b"\x80\x02}q\x00" + b"x" * 50)  # start of a protocol-2 pickle
    with pytest.raises(DataError, match="pickle"):
        read_cifar_batch(p)


def test_cifar_load_dataset(tmp_path, rng, no_env):
    d = tmp_path / "cifar-10-batches-bin"
    d.mkdir()
    for i, name in enumerate([f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]):
        images = rng.integers(0, 256, size=(2, 3, 32, 32), dtype=np.uint8)
        (d / name).write_bytes(cifar_bytes(images, np.array([i, 9 - i], np.uint8)))
    train = load_dataset("cifar10", "train", data_dir=tmp_path)
    assert train.images.shape == (10, 3, 32, 32) and train.images.dtype == np.float32
    assert train.labels.dtype == np.int32
    assert train.labels.tolist() == [0, 9, 1, 8, 2, 7, 3, 6, 4, 5]
    assert train.classes[0] == "airplane" and train.input_shape == (3, 32, 32)
    test = load_dataset("cifar10", "test", data_dir=tmp_path, limit=1)
    assert test.images.shape == (1, 3, 32, 32)


# ---------------------------------------------------------------- search order

def test_search_order(tmp_path, rng, monkeypatch, no_env):
    explicit, env = tmp_path / "explicit", tmp_path / "env"
    cache_imgs, _ = write_idx_split(no_env / "mnist", rng, 3)
    env_imgs, _ = write_idx_split(env / "mnist", rng, 4)       # sub-folder layout
    expl_imgs, _ = write_idx_split(explicit, rng, 5, gz=False)  # files directly, raw
    monkeypatch.setenv("GPUCNN_DATA", str(env))

    files = find_dataset("mnist", "train", data_dir=explicit)
    assert files[0].parent == explicit
    assert len(load_dataset("mnist", data_dir=explicit)) == 5   # data_dir beats env
    assert len(load_dataset("mnist")) == 4                      # env beats cache
    monkeypatch.delenv("GPUCNN_DATA")
    assert len(load_dataset("mnist")) == 3                      # cache
    # A data_dir is authoritative: without the dataset it is an error, never the cache.
    with pytest.raises(DataError, match="not found in --data-dir .*empty"):
        load_dataset("mnist", data_dir=tmp_path / "empty")
    assert {o for o, _ in search_locations("mnist", explicit)} == {"--data-dir"}
    assert [o for o, _ in search_locations("mnist")][-1] == "user cache"


def test_data_dir_with_one_split_names_the_missing_one(tmp_path, rng, monkeypatch, no_env):
    """Only the train files in --data-dir: the test split is not taken from elsewhere."""
    write_idx_split(no_env / "mnist", rng, 3)
    write_idx_split(no_env / "mnist", rng, 3, split="test")  # a complete copy elsewhere
    write_idx_split(tmp_path / "mine", rng, 5)
    assert len(load_dataset("mnist", "train", data_dir=tmp_path / "mine")) == 5
    with pytest.raises(DataError) as e:
        load_dataset("mnist", "test", data_dir=tmp_path / "mine")
    msg = str(e.value)
    assert "holds the train split but not the test split" in msg
    assert "t10k-images-idx3-ubyte" in msg and str(tmp_path / "mine") in msg
    assert str(no_env) not in msg  # the cache was not searched


def test_not_found_lists_places(tmp_path, monkeypatch, no_env):
    monkeypatch.setenv("GPUCNN_DATA", str(tmp_path / "envdir"))
    fake = dataclasses.replace(dataset_info("fashion-mnist"),
                               system_dirs=(str(tmp_path / "sysdir"),))
    monkeypatch.setitem(datasets_mod.DATASETS, "fashion-mnist", fake)
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", "test")
    msg = str(e.value)
    for place in ["envdir", str(no_env / "fashion-mnist"), "sysdir"]:
        assert place in msg
    assert "t10k-images-idx3-ubyte" in msg
    assert "--download" in msg and "apt-get install dataset-fashion-mnist" in msg
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", "test", data_dir=tmp_path / "mydata")
    msg = str(e.value)
    assert "mydata" in msg and "--data-dir is authoritative" in msg
    assert "envdir" not in msg and "sysdir" not in msg


def test_wrong_image_size_rejected(tmp_path, rng, no_env):
    d = tmp_path / "mnist"
    d.mkdir()
    write(d / "train-images-idx3-ubyte", encode_idx(make_images(rng, 2, 32, 32)), True)
    write(d / "train-labels-idx1-ubyte", encode_idx(make_labels(rng, 2)), True)
    with pytest.raises(DataError, match="items of shape \\(32, 32\\), expected \\(28, 28\\); "
                                        "nothing was read"):
        load_dataset("mnist", data_dir=tmp_path)


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("imagenet")


def test_normalisation_and_computed_stats(tmp_path, rng, no_env):
    images, labels = write_idx_split(tmp_path / "kmnist", rng, 50)
    write_idx_split(tmp_path / "kmnist", rng, 8, split="test")
    ds = load_dataset("kmnist", data_dir=tmp_path)
    x = images.astype(np.float64) / 255
    assert ds.mean[0] == pytest.approx(x.mean(), abs=1e-12)
    assert ds.std[0] == pytest.approx(x.std(), abs=1e-12)
    assert abs(float(ds.images.mean())) < 1e-5
    assert float(ds.images.std()) == pytest.approx(1, abs=1e-5)
    np.testing.assert_array_equal(ds.labels, labels.astype(np.int32))
    test = load_dataset("kmnist", "test", data_dir=tmp_path)   # test split uses train stats
    assert test.mean == ds.mean and len(test) == 8
    ref = ((images[:, None].astype(np.float64) / 255 - ds.mean[0]) / ds.std[0])
    np.testing.assert_allclose(ds.images, ref, rtol=1e-5, atol=1e-5)
    imgs, labs = ds  # unpacks as (images, labels)
    assert imgs is ds.images and labs is ds.labels


# ---------------------------------------------------------------- batches and augmentation

def test_iterate_batches_determinism_and_coverage():
    n = 103
    images = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1)
    labels = np.arange(n, dtype=np.int32)

    def order(**kw):
        return np.concatenate([y for _, y in iterate_batches(images, labels, 10, **kw)])

    a = order(seed=3, epoch=0)
    assert sorted(a.tolist()) == list(range(n))                     # every sample once
    np.testing.assert_array_equal(a, order(seed=3, epoch=0))         # reproducible
    assert not np.array_equal(a, order(seed=3, epoch=1))             # epochs differ
    assert not np.array_equal(a, order(seed=4, epoch=0))             # seeds differ
    np.testing.assert_array_equal(order(shuffle=False), labels)
    np.testing.assert_array_equal(a, epoch_permutation(n, 3, 0))
    sizes = [len(y) for _, y in iterate_batches(images, labels, 10, seed=3)]
    assert sizes == [10] * 10 + [3]
    assert [len(y) for _, y in iterate_batches(images, labels, 10, drop_last=True)] == [10] * 10
    for x, y in iterate_batches(images, labels, 10, seed=1):
        np.testing.assert_array_equal(x.ravel(), y.astype(np.float32))  # pairs stay paired
    # Resuming mid-epoch gives the same remaining batches.
    full = [y for _, y in iterate_batches(images, labels, 10, seed=7, epoch=2)]
    resumed = [y for _, y in iterate_batches(images, labels, 10, seed=7, epoch=2, start_batch=4)]
    assert len(resumed) == len(full) - 4
    for r, f in zip(resumed, full[4:]):
        np.testing.assert_array_equal(r, f)
    with pytest.raises(ValueError):
        next(iterate_batches(images, labels, 0))
    with pytest.raises(ValueError):
        next(iterate_batches(images, labels[:-1], 4))


def test_random_crop_flip_shapes_and_determinism(rng):
    x = rng.standard_normal((16, 3, 32, 32)).astype(np.float32)
    a = random_crop_flip(x, np.random.default_rng(1))
    b = random_crop_flip(x, np.random.default_rng(1))
    c = random_crop_flip(x, np.random.default_rng(2))
    assert a.shape == x.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # Each output is a shifted (possibly mirrored) window of the padded input.
    fill = np.array([-1.0, -2.0, -3.0], np.float32)
    out = random_crop_flip(x, np.random.default_rng(5), pad=4, fill=fill)
    padded = np.empty((16, 3, 40, 40), np.float32)
    padded[...] = fill[:, None, None]
    padded[:, :, 4:36, 4:36] = x
    for i in range(16):
        windows = [padded[i, :, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
        assert any(np.array_equal(out[i], w) or np.array_equal(out[i], w[:, :, ::-1])
                   for w in windows)
    # pad=0 without flip is the identity.
    np.testing.assert_array_equal(random_crop_flip(x, np.random.default_rng(0), pad=0,
                                                   flip=False), x)


def test_dataset_batches_with_augmentation_reproducible(tmp_path, rng, no_env):
    d = tmp_path / "cifar10"
    d.mkdir()
    for name in [f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]:
        images = rng.integers(0, 256, size=(4, 3, 32, 32), dtype=np.uint8)
        (d / name).write_bytes(cifar_bytes(images, make_labels(rng, 4)))
    ds = load_dataset("cifar10", data_dir=tmp_path)
    run1 = list(ds.batches(6, seed=11, epoch=3, augment=True))
    run2 = list(ds.batches(6, seed=11, epoch=3, augment=True))
    assert len(run1) == ds.num_batches(6) == 4
    for (x1, y1), (x2, y2) in zip(run1, run2):
        assert x1.shape[1:] == (3, 32, 32)
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    plain = np.concatenate([x for x, _ in ds.batches(6, seed=11, epoch=3)])
    assert not np.array_equal(plain, np.concatenate([x for x, _ in run1]))


# ---------------------------------------------------------------- the real Fashion-MNIST

def test_real_fashion_mnist(monkeypatch, no_env):
    test = load_dataset("fashion-mnist", "test")
    assert test.files[0].parent == FASHION_DIR
    assert test.images.shape == (10000, 1, 28, 28) and test.labels.shape == (10000,)
    assert np.bincount(test.labels).tolist() == [1000] * 10
    labels = read_idx_labels(FASHION_DIR / "train-labels-idx1-ubyte.gz")
    assert labels.shape == (60000,) and labels.min() == 0 and labels.max() == 9
    images = read_idx_images(FASHION_DIR / "train-images-idx3-ubyte.gz")
    assert images.shape == (60000, 28, 28)
    mean, std = channel_stats(images[:, None])
    info = dataset_info("fashion-mnist")
    assert mean[0] == pytest.approx(info.mean[0], abs=5e-5)
    assert std[0] == pytest.approx(info.std[0], abs=5e-5)


# ---------------------------------------------------------------- hostile files (issue 22)

def peak_memory(fn):
    """(the DataError ``fn`` raised, the peak of the memory traced while it ran)."""
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as e:
            fn()
        return str(e.value), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def idx_header(magic_ndim, *dims):
    return bytes([0, 0, 8, magic_ndim]) + struct.pack(f">{len(dims)}I", *dims)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_dimensions_whose_product_wraps_are_refused_unread(tmp_path, gz):
    # 65537 * 65536 * 4294901761 is 65536 modulo 2**64: a 64 KiB body would "fit"
    p = write(tmp_path / "wrap-idx3-ubyte",
              idx_header(3, 65537, 65536, 4294901761) + bytes(65536), gz)
    msg, peak = peak_memory(lambda: read_idx_images(p))
    assert p.name in msg and "65537x65536x4294901761" in msg and "nothing was read" in msg
    assert peak < 1 << 20, peak


def test_a_sparse_giant_idx_file_is_refused_by_its_size(tmp_path):
    p = tmp_path / "train-images-idx3-ubyte"
    with open(p, "wb") as f:
        f.write(idx_header(3, 10, 28, 28) + bytes(7840))
        f.truncate(3 << 30)  # 3 GiB, sparse: nothing of it is on disk
    msg, peak = peak_memory(lambda: read_idx_images(p))
    assert "wrong size (trailing data): header says 10 images of 28x28 = 7840 bytes" in msg
    assert peak < 1 << 20, peak


def test_a_gzip_bomb_inflates_no_further_than_its_header_says(tmp_path):
    p = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(p, "wb") as f:  # 10 images declared, 64 MiB of zeros inflated
        f.write(idx_header(3, 10, 28, 28))
        chunk = bytes(1 << 20)
        for _ in range(64):
            f.write(chunk)
    assert p.stat().st_size < 1 << 20
    msg, peak = peak_memory(lambda: read_idx_images(p))
    assert "wrong size (trailing data)" in msg and "file has more than 7840" in msg
    assert peak < 2 << 20, peak


@pytest.mark.parametrize("kind", ["images", "labels"])
def test_a_gzip_header_claiming_gigabytes_costs_what_the_stream_holds(tmp_path, kind):
    # Found by tests/test_fuzz.py: a gzip's header is only a claim (its size cannot be checked
    # against the file's), and the reader allocated the claimed 2 GiB before inflating a byte.
    dims = (2_700_000, 28, 28) if kind == "images" else (2_100_000_000,)
    p = write(tmp_path / f"claims-{kind}", idx_header(len(dims), *dims) + bytes(4096), gz=True)
    read = read_idx_images if kind == "images" else read_idx_labels
    msg, peak = peak_memory(lambda: read(p))
    assert "truncated" in msg and "file has 4096 (after the" in msg
    assert peak < 4 << 20, peak


@pytest.mark.parametrize("gz", [True, False])
def test_an_idx_header_of_255_huge_dimensions_is_refused_by_its_size(tmp_path, gz):
    # Found by tests/test_fuzz.py: a flipped dimension-count byte gave read_idx (any kind of
    # IDX file) a header of 111 dimensions, whose size overflowed a float in the message.
    p = write(tmp_path / "many-idx", idx_header(255, *[2 ** 32 - 1] * 255), gz)
    msg, peak = peak_memory(lambda: read_idx(p))
    assert "= at least 2^8159 bytes of data, more than the 2.0 GiB" in msg, msg
    assert "nothing was read" in msg and "\n" not in msg
    assert peak < 1 << 20, peak


def test_a_sparse_giant_cifar_file_is_refused_unread(tmp_path):
    p = tmp_path / "data_batch_1.bin"
    with open(p, "wb") as f:
        f.truncate(3073 * 700_000)  # 2 GiB and more, sparse
    msg, peak = peak_memory(lambda: read_cifar_batch(p))
    assert p.name in msg and "more than the 2.0 GiB a dataset file may hold" in msg
    assert peak < 1 << 20, peak


@pytest.mark.parametrize("name", ["mnist", "kmnist"])  # constants / statistics computed
def test_constant_training_images_are_a_clear_error(tmp_path, rng, no_env, name):
    d = tmp_path / name
    d.mkdir()
    write(d / "train-images-idx3-ubyte", encode_idx(np.full((6, 28, 28), 17, np.uint8)), True)
    write(d / "train-labels-idx1-ubyte", encode_idx(make_labels(rng, 6)), True)
    write_idx_split(d, rng, 4, split="test")
    for split in ("train", "test") if name == "kmnist" else ("train",):
        with pytest.raises(DataError) as e:
            load_dataset(name, split, data_dir=tmp_path)
        msg = str(e.value)
        assert "train-images-idx3-ubyte.gz" in msg and "is 17: no variance (std 0)" in msg
