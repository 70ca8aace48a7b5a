"""The trainer's device data (gpucnn/train_data.py, ``gpucnn train --device-data``): the
placement decision, batches equal to the host path's bit for bit (Fashion-MNIST and synthetic
CIFAR-10, on emu), training with device data on and off giving identical parameters, and the
option's plumbing (start-up line, checkpoint config, CLI)."""
import contextlib
from types import SimpleNamespace

import numpy as np
import pytest

from gpucnn import train_data
from gpucnn.backends import get_backend
from gpucnn.backends.device import make_emu_backend
from gpucnn.data import load_dataset
from gpucnn.train import TrainConfig, Trainer
from gpucnn.testing import write_cifar10
from gpucnn.train_checkpoint import config_record
from gpucnn.train_data import (DEVICE_DATA_SHARE, TrainBatches, device_data_choice,
                               free_device_bytes)

MB = 10 ** 6


@pytest.fixture(scope="module")
def emu():
    return make_emu_backend(checks=True, seed=3)  # poisoned outputs: a skipped write shows


# ---- the decision --------------------------------------------------------------------------
def test_auto_uses_the_device_when_the_split_fits_its_share():
    free = 400 * MB
    fits = int(free * DEVICE_DATA_SHARE)
    on, why = device_data_choice("auto", fits, free, "free on the GPU")
    assert on and why == "--device-data auto: 100.0 MB fit in 25% of the 400.0 MB free on the GPU"
    on, why = device_data_choice("auto", fits + 1, free, "free on the GPU")
    assert not on and "more than 25% of the 400.0 MB" in why
    assert device_data_choice("on", fits, free, "x")[0]


def test_on_that_does_not_fit_is_an_error_saying_what_to_do():
    with pytest.raises(ValueError, match=r"--device-data on: the training split needs 47\.0 MB "
                                         r".*more than 25% of the 100\.0 MB .*--device-data auto"):
        device_data_choice("on", 47 * MB, 100 * MB, "free on the GPU")
    with pytest.raises(ValueError, match="the free memory is unknown"):
        device_data_choice("on", 1, None, "")
    assert device_data_choice("auto", 1, None, "") == (
        False, "--device-data auto: 0.0 MB is the free memory is unknown")


def test_off_and_bad_modes():
    assert device_data_choice("off", 1, 10 ** 12, "x") == (False, "--device-data off")
    with pytest.raises(ValueError, match="device_data must be one of auto, on, off"):
        device_data_choice("yes", 1, 10, "x")
    with pytest.raises(ValueError, match="device_data must be one of"):
        TrainConfig(device_data="always").validate()


def test_free_memory_on_cuda_is_the_driver_s_plus_the_pool_s():
    cupy = SimpleNamespace(
        cuda=SimpleNamespace(runtime=SimpleNamespace(memGetInfo=lambda: (1000, 5000))),
        get_default_memory_pool=lambda: SimpleNamespace(free_bytes=lambda: 24))
    fake = SimpleNamespace(name="cuda", xp=cupy, on_device=contextlib.nullcontext)
    assert free_device_bytes(fake) == (1024, "free on the GPU")


def test_free_memory_on_the_emulator_is_the_host_s(emu):
    free, where = free_device_bytes(emu)
    assert free > 0 and where == "of host memory available (the emu device's)"


# ---- batches: device data == host data ------------------------------------------------------
@pytest.fixture(scope="module")
def fashion():
    return load_dataset("fashion-mnist", "train", limit=300)


def _collect(feed, epoch, start=0, bs=64):
    B = feed.backend
    return [(B.to_numpy(x), B.to_numpy(y)) for x, y in feed.batches(bs, 7, epoch, start)]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.dtype == xb.dtype == np.float32 and ya.dtype == yb.dtype == np.int32
        np.testing.assert_array_equal(xa.view(np.int32), xb.view(np.int32))
        np.testing.assert_array_equal(ya, yb)


def test_fashion_mnist_batches_on_the_device_equal_the_host_path(emu, fashion):
    on, off = TrainBatches(emu, fashion, "on"), TrainBatches(emu, fashion, "off")
    assert on.on_device and on.images.dtype == np.uint8 and not off.on_device
    assert on.line.startswith("uint8 images on the device (0.2 MB; float32: 0.9 MB), batches "
                              "normalised by a gather kernel: --device-data on: 0.2 MB fit")
    assert off.line == ("float32 images on the emu backend (0.9 MB), gathered per batch: "
                        "--device-data off")
    for epoch, start in ((0, 0), (1, 2)):  # a resumed epoch starts mid-way
        _assert_same_batches(_collect(on, epoch, start), _collect(off, epoch, start))


def test_cifar_augmented_batches_on_the_device_equal_the_host_path(emu, tmp_path, rng):
    ds = load_dataset("cifar10", "train", data_dir=write_cifar10(tmp_path, rng, 7))
    on = TrainBatches(emu, ds, "auto", augment=True)
    off = TrainBatches(emu, ds, "off", augment=True)
    assert on.on_device and "cropped, flipped and normalised by a gather kernel" in on.line
    assert off.images is None and off.line == (
        "batches augmented on the host, staged one batch ahead (the emu device copies "
        "synchronously: no pinned memory or second stream): --device-data off")
    for epoch, start in ((0, 0), (3, 1)):
        _assert_same_batches(_collect(on, epoch, start, bs=8), _collect(off, epoch, start, bs=8))


def test_the_cpu_backends_use_the_host_arrays(fashion):
    feed = TrainBatches(get_backend("numpy"), fashion, "on")
    assert not feed.on_device and feed.images.dtype == np.float32
    assert feed.line.endswith("the numpy backend computes on the host (--device-data does not "
                              "apply)")


def test_auto_falls_back_to_host_data_and_on_refuses(emu, fashion, monkeypatch):
    monkeypatch.setattr(train_data, "free_device_bytes", lambda B: (100_000, "free on it"))
    assert not TrainBatches(emu, fashion, "auto").on_device
    with pytest.raises(ValueError, match="--device-data on: the training split needs 0.2 MB"):
        TrainBatches(emu, fashion, "on")


# ---- training -------------------------------------------------------------------------------
def _train(device_data, **kw):
    cfg = TrainConfig(model="lenet5", dataset="fashion-mnist", backend="emu", epochs=1,
                      batch_size=64, lr=0.05, momentum=0.9, limit=256, test_limit=64,
                      progress=False, device_data=device_data, **kw)
    t = Trainer(cfg)
    return t, t.fit()


def test_lenet5_trains_bit_identically_with_device_data_on_and_off(capsys):
    on, m_on = _train("on")
    said = capsys.readouterr().out
    assert "data: uint8 images on the device" in said and "--device-data on" in said
    off, m_off = _train("off")
    assert "data: float32 images on the emu backend (0.8 MB), gathered per batch: --device-data " \
        "off" in capsys.readouterr().out
    assert on.opt.steps == off.opt.steps == 4
    for a, b in zip(on.model.parameters(), off.model.parameters()):
        np.testing.assert_array_equal(on.backend.to_numpy(a.data), off.backend.to_numpy(b.data))
    assert m_on["epochs"][0]["train_loss"] == m_off["epochs"][0]["train_loss"]
    # an execution detail, like graph mode: not part of the run a resume compares
    assert "device_data" not in m_on["config"] and m_on["config"] == m_off["config"]


def test_the_command_line_option():
    from gpucnn.cli import build_parser
    args = build_parser().parse_args(["train", "--device-data", "off"])
    assert args.device_data == "off"
    assert build_parser().parse_args(["train"]).device_data == "auto"
    assert "device_data" not in config_record(TrainConfig(device_data="on"))
