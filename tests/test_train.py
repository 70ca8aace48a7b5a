"""Training loop, exact resume, divergence stop, and the CLI, on real Fashion-MNIST."""
import json
import os

import numpy as np
import pytest

from gpucnn.checkpoint import CheckpointError
from gpucnn.cli import main
from gpucnn.train import TrainConfig, Trainer, TrainingDiverged, train

def _cfg(tmp_path, **kw):
    base = dict(model="lenet5", dataset="fashion-mnist", epochs=2, batch_size=64, lr=0.05,
                backend="numpy", limit=640, test_limit=256, progress=False,
                checkpoint=str(tmp_path / "ck.npz"))
    base.update(kw)
    return TrainConfig(**base)


def _params(trainer):
    return {n: p.data.copy() for n, p in trainer.model.named_parameters()}


def test_resume_after_interrupt_is_exact(tmp_path):
    straight = Trainer(_cfg(tmp_path, checkpoint=None))
    straight.fit()

    cfg = _cfg(tmp_path)
    first = Trainer(cfg)

    def interrupt(tr):
        if tr.epoch == 1 and tr.batch_in_epoch == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        first.fit(on_step=interrupt)
    assert os.path.exists(cfg.checkpoint)

    cfg.resume = True
    resumed = Trainer(cfg)
    resumed.load(cfg.checkpoint)
    assert (resumed.epoch, resumed.batch_in_epoch) == (1, 4)
    resumed.fit()
    a, b = _params(straight), _params(resumed)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert resumed.history[-1]["train_loss"] == straight.history[-1]["train_loss"]


def test_nan_input_stops_training_clearly(tmp_path):
    tr = Trainer(_cfg(tmp_path, epochs=1))
    tr.train_x[::7] = np.nan
    with pytest.raises(TrainingDiverged, match="loss became nan .* check the input data"):
        tr.fit()
    assert not os.path.exists(tr.cfg.checkpoint)


def test_resume_rejects_foreign_checkpoint(tmp_path):
    path = tmp_path / "ck.npz"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        train(_cfg(tmp_path, resume=True))
    with pytest.raises(ValueError, match="--resume needs --checkpoint"):
        train(_cfg(tmp_path, resume=True, checkpoint=None))


def test_cli_train_summary_and_errors(tmp_path, capsys):
    metrics = tmp_path / "m.json"
    rc = main(["train", "--model", "lenet5", "--dataset", "fashion-mnist", "--epochs", "1",
               "--limit", "512", "--test-limit", "256", "--backend", "numpy", "--no-progress",
               "--metrics-json", str(metrics), "--plot", str(tmp_path / "p.png")])
    assert rc == 0
    m = json.loads(metrics.read_text())
    assert m["backend"] == "numpy" and len(m["epochs"]) == 1
    assert 0.0 <= m["test_accuracy"] <= 1.0 and m["train_images_per_s"] > 0
    assert (tmp_path / "p.png").stat().st_size > 1000
    assert main(["summary", "alexnet"]) == 0
    out = capsys.readouterr().out
    assert "96x55x55" in out and "34,944" in out
    assert main(["train", "--dataset", "fashion-mnist", "--backend", "numpy", "--model",
                 "alexnet", "--limit", "8", "--no-progress"]) == 2
    assert "takes inputs of shape" in capsys.readouterr().err
    assert main(["train", "--data-dir", str(tmp_path), "--backend", "numpy", "--limit", "8",
                 "--no-progress"]) == 2  # --data-dir is authoritative: no fall-through
    assert "not found in --data-dir" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--epochs", "0"])
    assert main(["info", "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    assert "NumPy" in out
    from gpucnn.ops.conv import direct
    assert ("CPU kernels: direct convolution built for this CPU" in out) == direct.available()


def test_lenet5_one_epoch_fashion_mnist_reaches_84_percent(tmp_path):
    """The issue's acceptance run: one epoch, full data, NumPy backend."""
    m = train(TrainConfig(model="lenet5", dataset="fashion-mnist", epochs=1, batch_size=128,
                          lr=0.05, momentum=0.9, backend="numpy", progress=False,
                          metrics_json=str(tmp_path / "m.json")))
    print(f"one epoch: test accuracy {m['test_accuracy']:.4f}, "
          f"{m['train_images_per_s']:.0f} images/s")
    assert m["test_accuracy"] >= 0.84


@pytest.mark.slow
def test_lenet5_five_epochs_fashion_mnist_reaches_88_percent(tmp_path):
    m = train(TrainConfig(model="lenet5", dataset="fashion-mnist", epochs=5, batch_size=128,
                          lr=0.05, momentum=0.9, backend="numpy", progress=False))
    print("per epoch:", [round(r["test_accuracy"], 4) for r in m["epochs"]])
    assert m["test_accuracy"] >= 0.88


def test_cifar10_training_path_with_augmentation(tmp_path):
    """AlexNet-CIFAR on CIFAR-10 binary files (tiny ones written here): the host-side
    crop+flip augmentation path of the loop, and a finite loss."""
    rng = np.random.default_rng(0)
    d = tmp_path / "cifar10"
    d.mkdir()
    for name, n in [(f"data_batch_{i}.bin", 16) for i in range(1, 6)] + [("test_batch.bin", 16)]:
        labels = rng.integers(0, 10, (n, 1), dtype=np.uint8)
        pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        (d / name).write_bytes(np.concatenate([labels, pixels], axis=1).tobytes())
    m = train(TrainConfig(model="alexnet_cifar", dataset="cifar10", data_dir=str(tmp_path),
                          epochs=1, batch_size=16, lr=0.01, backend="numpy", limit=32,
                          progress=False))
    assert np.isfinite(m["epochs"][0]["train_loss"]) and m["epochs"][0]["images_per_s"] > 0


def test_checkpoint_written_by_0_1_0_loads_and_resumes(tmp_path):
    """tests/data holds a checkpoint written by gpucnn 0.1.0 (LeNet-5, 1 epoch of 256
    images, batch 64): it loads (schema 1 upgraded) and training continues from it."""
    import shutil
    from pathlib import Path

    from gpucnn.checkpoint import load_checkpoint
    from gpucnn.train import SCHEMA_VERSION

    ck = tmp_path / "old.npz"
    shutil.copy(Path(__file__).parent / "data" / "checkpoint_0.1.0_lenet5.npz", ck)
    assert "schema_version" not in load_checkpoint(ck)[1]
    tr = Trainer(_cfg(tmp_path, epochs=2, limit=256, checkpoint=str(ck), resume=True))
    tr.load(ck)
    assert (tr.epoch, tr.batch_in_epoch, len(tr.history)) == (1, 0, 1)
    tr.fit()
    assert tr.epoch == 2 and len(tr.history) == 2
    _, meta = load_checkpoint(ck)
    assert meta["schema_version"] == SCHEMA_VERSION and meta["written_by"].startswith("gpucnn ")
    # 0.1.0 recorded neither the run configuration nor the conv algorithms: not compared
    assert meta["config_changes"] == []
    assert "conv_algos.setting" in tr.metrics()["resume_unchecked"]


def test_metadata_of_a_newer_or_bad_schema_is_refused():
    from gpucnn.train import SCHEMA_VERSION, upgrade_metadata
    with pytest.raises(CheckpointError, match="schema 99 was written by a newer gpucnn"):
        upgrade_metadata({"schema_version": 99, "written_by": "gpucnn 9"}, "x.npz")
    with pytest.raises(CheckpointError, match="schema_version must be a positive int"):
        upgrade_metadata({"schema_version": "2"}, "x.npz")
    assert upgrade_metadata({}, "x.npz")["written_by"] == "gpucnn 0.1.0"
    # schema 3 records what --allow-config-change let through; older ones changed nothing
    two = upgrade_metadata({"schema_version": 2, "written_by": "gpucnn 0.1.0"}, "x.npz")
    assert two["config_changes"] == [] and two["schema_version"] == SCHEMA_VERSION
    # schema 4 records an image folder's classes and preprocessing, 5 every dataset's; older
    # runs recorded none: not compared on --resume (a key the checkpoint does not hold)
    assert "data" not in two
    three = upgrade_metadata({"schema_version": 3, "written_by": "gpucnn 0.1.0",
                              "config_changes": []}, "x.npz")
    assert "data" not in three and three["schema_version"] == SCHEMA_VERSION
    four = {"schema_version": 4, "written_by": "gpucnn 0.3.0", "config_changes": [],
            "data": None, "config": {"batch_size": 8}}
    assert "data" not in upgrade_metadata(four, "x.npz")
    assert upgrade_metadata(four, "x.npz")["config"]["reinit"] is False  # none before 5
    from gpucnn.runmeta import compare_run
    differences, unchecked = compare_run(upgrade_metadata(four, "x.npz"),
                                         {"data": {"classes": ["a"]}, "config": {}})
    assert "data" in unchecked and "data" not in differences


def test_conv_algorithms_are_recorded_restored_and_compared(tmp_path, monkeypatch):
    """The checkpoint and the metrics record the convolution algorithms; --resume presets
    auto's choices from the checkpoint and refuses a forced different setting."""
    from gpucnn.checkpoint import load_checkpoint
    monkeypatch.delenv("GPUCNN_CONV_ALGO", raising=False)
    cfg = _cfg(tmp_path, epochs=1, limit=128)
    tr = Trainer(cfg)
    tr.fit()
    saved = load_checkpoint(cfg.checkpoint)[1]["conv_algos"]
    assert saved["setting"] == "auto" and saved["kind"] == "cpu"
    assert saved["chosen"] and set(saved["chosen"].values()) <= {"wide", "direct", "im2col"}
    assert tr.metrics()["conv_algorithms"] == saved["chosen"]

    resumed = Trainer(_cfg(tmp_path, epochs=2, limit=128, resume=True))
    resumed.load(cfg.checkpoint)
    assert all(resumed.backend.conv_selector.auto[k] == v for k, v in saved["chosen"].items())

    monkeypatch.setenv("GPUCNN_CONV_ALGO", "im2col")
    with pytest.raises(CheckpointError,
                       match=r"checkpoint .auto., now .im2col. \(\$GPUCNN_CONV_ALGO"):
        Trainer(_cfg(tmp_path, epochs=2, limit=128, resume=True)).load(cfg.checkpoint)
