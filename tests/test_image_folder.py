"""Image folders (issue 21 parts 1, 2, 7): decoding, torchvision's transforms checked against
their definitions, ImageFolder's discovery, stratified splits and subsets, unreadable files, and
training from a folder of Fashion-MNIST PNGs."""
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gpucnn.cli import main
from gpucnn.runmeta import SCHEMA_VERSION
from gpucnn.data import DataError, read_idx_pair
from gpucnn.data.folder import (augment_rng, class_files, find_classes, load_folder,
                                stratified_split, stratified_subset)
from gpucnn.data.preprocess import Preprocess
from gpucnn.data.transforms import (RATIO, SCALE, center_crop, cover_size, decode, hflip,
                                    random_resized_crop, resize_center, resize_short,
                                    resized_crop_params, to_array)

FMNIST = "/usr/share/datasets/fashion-mnist"


def _png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def _messy_folder(root, rng):
    """train/ with classes b (PNG RGB, odd sizes, an upper-case extension), a (JPEG, a
    grayscale PNG in the RGB set, a corrupt file) and empty/ (no image, a text file)."""
    for i in range(6):
        _png(f"{root}/train/b/{i}.png",
             rng.integers(0, 256, (20 + i, 31 - i, 3), dtype=np.uint8))
    _png(f"{root}/train/b/UPPER.PNG", rng.integers(0, 256, (17, 40, 3), dtype=np.uint8))
    os.makedirs(f"{root}/train/a")
    for i in range(5):
        img = Image.fromarray(rng.integers(0, 256, (33, 29, 3), dtype=np.uint8))
        img.save(f"{root}/train/a/{i}.jpg", quality=90)
    _png(f"{root}/train/a/gray.png", rng.integers(0, 256, (25, 25), dtype=np.uint8))
    with open(f"{root}/train/a/corrupt.jpg", "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    os.makedirs(f"{root}/train/empty")
    with open(f"{root}/train/empty/notes.txt", "w") as f:
        f.write("not an image")


# ---- decoding -----------------------------------------------------------------------------
def test_png_decodes_to_its_source_pixels_and_gif_to_its_first_frame(tmp_path, rng):
    rgb = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    _png(str(tmp_path / "x.png"), rgb)
    np.testing.assert_array_equal(to_array(decode(tmp_path / "x.png", 3)),
                                  rgb.transpose(2, 0, 1))
    gray = rng.integers(0, 256, (9, 11), dtype=np.uint8)
    _png(str(tmp_path / "g.png"), gray)
    np.testing.assert_array_equal(to_array(decode(tmp_path / "g.png", 1))[0], gray)
    # a grayscale file in an RGB set: Pillow's L -> RGB copies the value to each channel
    np.testing.assert_array_equal(to_array(decode(tmp_path / "g.png", 3)),
                                  np.stack([gray] * 3))
    frames = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (10, 200)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert to_array(decode(tmp_path / "a.gif", 1)).max() == 10
    with pytest.raises(DataError, match="not an image Pillow can read"):
        (tmp_path / "bad.png").write_bytes(b"garbage")
        decode(tmp_path / "bad.png", 3)


# ---- transforms against torchvision's definitions -----------------------------------------
def test_resize_short_side_and_center_crop_follow_torchvision(rng):
    img = Image.fromarray(rng.integers(0, 256, (50, 80, 3), dtype=np.uint8))  # w 80, h 50
    r = resize_short(img, 32)
    assert r.size == (int(32 * 80 / 50), 32)  # Resize(32): long side int(size * long / short)
    # the filter is PIL's bilinear
    np.testing.assert_array_equal(np.asarray(r), np.asarray(img.resize((51, 32),
                                                                       Image.BILINEAR)))
    assert resize_short(img.transpose(Image.TRANSPOSE), 32).size == (32, 51)
    c = center_crop(r, 32, 32)
    left = int(round((51 - 32) / 2.0))  # torchvision's offsets: round half to even
    np.testing.assert_array_equal(np.asarray(c), np.asarray(r)[:, left:left + 32])
    assert left == 10
    # images already at the size are used as they are; others resized then cropped
    same = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    assert resize_center(same, 32, 32) is same
    np.testing.assert_array_equal(np.asarray(resize_center(img, 32, 32)), np.asarray(c))
    # a non-square input: the resize just covers it
    assert cover_size(80, 50, 20, 40) == (40, 25) and cover_size(80, 50, 40, 20) == (64, 40)
    assert resize_center(img, 20, 40).size == (40, 20)


class _Scripted:
    """A generator that answers uniform() from a script and integers() with the low end."""

    def __init__(self, uniforms):
        self.uniforms, self.calls = list(uniforms), 0

    def uniform(self, lo, hi):
        self.calls += 1
        u = self.uniforms.pop(0)
        return lo + u * (hi - lo)

    def integers(self, lo, hi):
        return lo


def test_random_resized_crop_params_follow_get_params(rng):
    h, w = 60, 100
    for _ in range(300):
        top, left, ch, cw = resized_crop_params(rng, h, w)
        assert 0 <= top <= h - ch and 0 <= left <= w - cw and ch >= 1 and cw >= 1
        if (ch, cw) != (h, w) and not (ch == h and cw == round(h * RATIO[1])):
            # a box of the loop: area share in SCALE and ratio in RATIO, up to the rounding
            assert SCALE[0] * 0.8 <= ch * cw / (h * w) <= SCALE[1] + 0.05
            assert RATIO[0] * 0.8 <= cw / ch <= RATIO[1] * 1.25
    # one try: area share u0 of scale, ratio exp(log-uniform u1), w,h by Python's round
    s = _Scripted([0.5, 0.5])
    top, left, ch, cw = resized_crop_params(s, h, w)
    area = h * w * (SCALE[0] + 0.5 * (SCALE[1] - SCALE[0]))
    aspect = math.exp(0.5 * (math.log(RATIO[0]) + math.log(RATIO[1])))
    assert (ch, cw) == (int(round(math.sqrt(area / aspect))),
                        int(round(math.sqrt(area * aspect))))
    assert (top, left) == (0, 0) and s.calls == 2
    # ten failed tries (the whole area at the widest ratio does not fit), then the fall-back:
    # a centre crop at the ratio clamped to RATIO (here the image is wider than 4/3)
    s = _Scripted([1.0, 1.0] * 10)
    assert resized_crop_params(s, h, w) == ((h - h) // 2, (w - 80) // 2, h, 80) and s.calls == 20
    s = _Scripted([1.0, 1.0] * 10)  # an image taller than 3/4: the width stays
    assert resized_crop_params(s, 100, 60) == ((100 - 80) // 2, 0, 80, 60)
    s = _Scripted([1.0, 1.0] * 10)  # a ratio inside RATIO: the whole image
    assert resized_crop_params(s, 100, 100) == (0, 0, 100, 100) or s.calls < 20


def test_random_resized_crop_is_crop_then_bilinear_resize_and_flip_mirrors(rng):
    img = Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    seed = int(rng.integers(1 << 30))
    top, left, ch, cw = resized_crop_params(np.random.default_rng(seed), 40, 50)
    want = img.crop((left, top, left + cw, top + ch)).resize((24, 24), Image.BILINEAR)
    got = random_resized_crop(img, np.random.default_rng(seed), 24, 24)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    np.testing.assert_array_equal(np.asarray(hflip(img)), np.asarray(img)[:, ::-1])
    # a sample's draws depend on (seed, epoch, index) only
    a, b = augment_rng(3, 1, 7).random(4), augment_rng(3, 1, 7).random(4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, augment_rng(3, 2, 7).random(4))


# ---- discovery, splits, subsets -----------------------------------------------------------
def test_imagefolder_discovery_empty_classes_and_unreadable_files(tmp_path, rng):
    _messy_folder(tmp_path, rng)
    assert find_classes(tmp_path / "train") == ["a", "b", "empty"]
    names = [os.path.basename(p) for p in class_files(tmp_path / "train" / "b")]
    assert names == ["0.png", "1.png", "2.png", "3.png", "4.png", "5.png", "UPPER.PNG"]
    # sub-folders are walked (sorted), a link cycle is not followed forever
    _png(f"{tmp_path}/train/b/sub/z.png", rng.integers(0, 256, (5, 5, 3), dtype=np.uint8))
    os.symlink(tmp_path / "train" / "b", tmp_path / "train" / "b" / "sub" / "loop")
    names = [os.path.relpath(p, tmp_path / "train" / "b")
             for p in class_files(tmp_path / "train" / "b")]
    assert names[-1] == os.path.join("sub", "z.png") and len(names) == 8
    with pytest.raises(DataError, match=r"train/empty: class folder without images.*"
                                        r"--allow-empty-classes"):
        load_folder(tmp_path, 3, (16, 16), val_split=0.3)
    with pytest.raises(DataError, match=r"corrupt.jpg.*--strict"):
        load_folder(tmp_path, 3, (16, 16), val_split=0.3, allow_empty_classes=True,
                    strict=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_folder(tmp_path, 3, (16, 16), val_split=0.3, allow_empty_classes=True)
    skipped = [str(w.message) for w in caught if "skipped" in str(w.message)]
    assert len(skipped) == 1 and "corrupt.jpg" in skipped[0]
    assert [p for p, _ in data.skipped] == [str(tmp_path / "train/a/corrupt.jpg")]
    assert data.preprocess.classes == ("a", "b", "empty")
    n = len(data.train) + len(data.val)
    assert n == 14 and data.train.pixels.shape[1:] == (3, 16, 16)  # 15 files, 1 unreadable
    # stratified: each class of two or more images gives at least one to validation
    assert set(data.val.labels.tolist()) == {0, 1}
    assert data.train.images.dtype == np.float32 and abs(data.train.images.mean()) < 0.2


def test_stratified_split_and_subset_keep_every_class(rng):
    labels = np.repeat(np.arange(4), [100, 50, 30, 20])
    keep, held = stratified_split(labels, 0.1, seed=5)
    assert np.bincount(labels[held]).tolist() == [10, 5, 3, 2]
    assert len(np.intersect1d(keep, held)) == 0 and len(keep) + len(held) == 200
    assert np.array_equal(held, stratified_split(labels, 0.1, seed=5)[1])
    assert not np.array_equal(held, stratified_split(labels, 0.1, seed=6)[1])
    pick = stratified_subset(labels, 20, seed=int(rng.integers(1000)))
    assert np.bincount(labels[pick]).tolist() == [10, 5, 3, 2]
    assert np.all(np.diff(pick) > 0)


def test_preprocess_record_round_trips_and_is_checked():
    pre = Preprocess(("cat", "dog"), 3, (32, 32), (0.5, 0.4, 0.3), (0.2, 0.2, 0.2), "given")
    rec = json.loads(json.dumps(pre.to_record()))
    assert Preprocess.from_record(rec) == pre
    bad = dict(rec, std=[0.2, 0.0, 0.2])
    with pytest.raises(DataError, match=r"'std'"):
        Preprocess.from_record(bad, "ck.npz")
    with pytest.raises(DataError, match=r"'channels' is 1 with 3 mean"):
        Preprocess.from_record(dict(rec, channels=1), "ck.npz")
    with pytest.raises(DataError, match=r"'resize'"):
        Preprocess.from_record(dict(rec, resize="stretch"), "ck.npz")
    # the checkpoint schema holds it under "data" (None for the built-in datasets)
    from gpucnn import filerules
    filerules.check_metadata({"data": rec}, "ck.npz", DataError, fields=("data",))
    filerules.check_metadata({"data": None}, "ck.npz", DataError, fields=("data",))
    with pytest.raises(DataError, match=r"'data.channels' is 7: it must be an int in \[1, 3\]"):
        filerules.check_metadata({"data": dict(rec, channels=7)}, "ck.npz", DataError,
                                 fields=("data",))


# ---- training from a folder ---------------------------------------------------------------
def _fmnist_pngs(root, n_train, n_val):
    """train/: the first n_train Fashion-MNIST training images; val/: the first n_val test
    images (what --limit and --test-limit take of the IDX files)."""
    out = []
    for split, stem in (("train", "train"), ("val", "t10k")):
        x, y = read_idx_pair(f"{FMNIST}/{stem}-images-idx3-ubyte.gz",
                             f"{FMNIST}/{stem}-labels-idx1-ubyte.gz", 10, (28, 28))
        for i in range(n_train if split == "train" else n_val):
            _png(f"{root}/{split}/{y[i]}/{i:05d}.png", x[i])
        out.append(x)
    return out[0]


def test_fashion_mnist_png_folder_trains_lenet5_as_the_idx_files_do(tmp_path):
    root = tmp_path / "fm"
    x = _fmnist_pngs(root, 3000, 1000)
    ck, metrics = tmp_path / "ck.npz", tmp_path / "m.json"
    common = ["--epochs", "2", "--batch-size", "32", "--backend", "numpy", "--no-progress"]
    argv = ["train", "--dataset", "folder", "--data-dir", str(root), "--channels", "1",
            "--checkpoint", str(ck), "--metrics-json", str(metrics), *common]
    assert main(argv) == 0
    m = json.loads(metrics.read_text())
    rec = m["data"]
    assert rec["classes"] == [str(i) for i in range(10)] and rec["channels"] == 1
    assert rec["input_size"] == [28, 28] and rec["stats"].startswith("computed from the 3000")
    mean = x[:3000].astype(np.float64).mean() / 255  # the PNGs hold the IDX pixels exactly
    assert abs(rec["mean"][0] - mean) < 1e-9
    assert m["input_shape"] == [1, 28, 28] and m["skipped_images"] == 0
    idx_metrics = tmp_path / "idx.json"
    assert main(["train", "--dataset", "fashion-mnist", "--limit", "3000", "--test-limit",
                 "1000", "--metrics-json", str(idx_metrics), *common]) == 0
    idx = json.loads(idx_metrics.read_text())["test_accuracy"]
    print(f"LeNet-5, 3000 images, 2 epochs: PNG folder {m['test_accuracy']:.4f}, "
          f"IDX {idx:.4f}")
    assert m["test_accuracy"] >= 0.72 and abs(m["test_accuracy"] - idx) <= 0.05
    from gpucnn.checkpoint import open_checkpoint
    with open_checkpoint(ck) as c:
        assert c.metadata["data"] == rec and c.metadata["schema_version"] == SCHEMA_VERSION
    # resume continues the run
    at = argv.index("--epochs")
    assert main(argv[:at] + ["--epochs", "3"] + argv[at + 2:] + ["--resume"]) == 0
    assert len(json.loads(metrics.read_text())["epochs"]) == 3


def _augmented_folder(root, rng, n=12):
    for c in ("x", "y"):
        for i in range(n):
            h, w = rng.integers(20, 40, 2)
            _png(f"{root}/train/{c}/{i}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _augmented_cfg(root, **kw):
    from gpucnn.train import TrainConfig
    return TrainConfig(**{**dict(model="lenet5", dataset="folder", data_dir=str(root),
                                 input=(3, 28, 28), augment="random-resized-crop", epochs=2,
                                 batch_size=5, backend="numpy", progress=False,
                                 val_split=0.25, workers=0), **kw})


def _params(tr):
    return {n: p.data.copy() for n, p in tr.model.named_parameters()}


def test_augmented_training_does_not_depend_on_workers_and_resumes_exactly(tmp_path, rng):
    from gpucnn.train import Trainer
    _augmented_folder(tmp_path / "d", rng)
    runs = {}
    for workers in (0, 1, 2):  # threads in this process, one worker process, two
        tr = Trainer(_augmented_cfg(tmp_path / "d", workers=workers))
        m = tr.fit()
        runs[workers] = _params(tr)
        assert 0.0 <= m["data_wait_share"] <= 1.0
        if workers:
            tr.train_set.pipeline.close()
    for name, a in runs[0].items():
        np.testing.assert_array_equal(a, runs[1][name], err_msg=name)
        np.testing.assert_array_equal(a, runs[2][name], err_msg=name)
    # interrupted mid-epoch with two workers, resumed with one: the uninterrupted run's weights
    ck = str(tmp_path / "ck.npz")
    first = Trainer(_augmented_cfg(tmp_path / "d", workers=2, checkpoint=ck))

    def stop(tr):
        if tr.epoch == 1 and tr.batch_in_epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        first.fit(on_step=stop)
    first.train_set.pipeline.close()
    resumed = Trainer(_augmented_cfg(tmp_path / "d", workers=1, checkpoint=ck, resume=True))
    resumed.load(ck)
    resumed.fit()
    resumed.train_set.pipeline.close()
    for name, a in runs[0].items():
        np.testing.assert_array_equal(a, _params(resumed)[name], err_msg=name)
    # a sample's crop depends on (seed, epoch, index): the same in every run, not per epoch
    ds = resumed.train_set  # (its batches are views of the workers' slots: copied here)
    x0 = next(ds.batches(4, seed=0, epoch=0))[0].copy()
    np.testing.assert_array_equal(x0, next(ds.batches(4, seed=0, epoch=0))[0])
    assert not np.array_equal(x0, next(ds.batches(4, seed=0, epoch=1))[0])


def test_a_killed_worker_is_a_clear_error_not_a_hang(tmp_path, rng):
    import time
    from gpucnn.data.workers import POLL_S, WorkerDied
    from gpucnn.train import Trainer
    _augmented_folder(tmp_path / "d", rng, n=20)
    tr = Trainer(_augmented_cfg(tmp_path / "d", workers=2, batch_size=2, epochs=1))
    killed = {}

    def kill(tr):
        if tr.batch_in_epoch == 1:
            victim = tr.train_set.pipeline.procs[1]
            victim.kill()
            victim.join(5)
            killed["at"] = time.perf_counter()

    with pytest.raises(WorkerDied, match=r"input worker 1 \(pid \d+\) died \(killed by "
                                         r"SIGKILL\) while batch \d+ was being prepared"):
        tr.fit(on_step=kill)
    assert time.perf_counter() - killed["at"] < 10 * POLL_S
    tr.train_set.pipeline.close()
    assert not any(p.is_alive() for p in tr.train_set.pipeline.procs)


def test_folder_errors_are_named(tmp_path, capsys):
    assert main(["train", "--dataset", "folder", "--data-dir", str(tmp_path),
                 "--backend", "numpy", "--no-progress"]) == 2
    assert "no train/ folder" in capsys.readouterr().err
    assert main(["train", "--dataset", "folder", "--backend", "numpy", "--no-progress"]) == 2
    assert "needs --data-dir" in capsys.readouterr().err
    assert main(["train", "--augment", "random-resized-crop", "--backend", "numpy",
                 "--no-progress", "--limit", "8"]) == 2
    assert "--augment applies to --dataset folder only" in capsys.readouterr().err


def test_input_pipeline_bench_runs_both_sides(tmp_path):
    """A smoke run of `gpucnn bench --input-pipeline` (a comparison, not a timed test)."""
    pytest.importorskip("torch", reason="the comparison side needs PyTorch (CI installs it)")
    out = tmp_path / "ip.json"
    assert main(["bench", "--input-pipeline", "--images", "8", "--rounds", "1", "--workers",
                 "1", "--batch-size", "4", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["crop"] for r in rows] == [224, 32] and all(r["images"] == 8 for r in rows)
    assert all(r["gpucnn_images_per_s"] > 0 and r["torch_dataloader_images_per_s"] > 0
               for r in rows)


@pytest.mark.parametrize("augment", ["none", "random-resized-crop"])
def test_folder_training_on_the_device_backend(tmp_path, rng, augment):
    """On emu (the device backend without a GPU). Without augmentation the folder's uint8
    images go to the device and batches are gathered there: training equals the host-data
    path bit for bit. With it, batches come from the workers: training equals the threads'."""
    from gpucnn.train import Trainer
    _augmented_folder(tmp_path / "d", rng, n=6)
    variants = ([{"device_data": "on"}, {"device_data": "off"}] if augment == "none"
                else [{"workers": 1}, {"workers": 0}])
    runs = []
    for v in variants:
        tr = Trainer(_augmented_cfg(tmp_path / "d", **{"backend": "emu", "epochs": 1,
                                                        "augment": augment, "workers": 1, **v}))
        assert tr.feed.on_device == (v.get("device_data") == "on")
        tr.fit()
        runs.append(_params(tr))
        if getattr(tr.train_set, "pipeline", None) is not None:
            tr.train_set.pipeline.close()
    for name, a in runs[0].items():
        np.testing.assert_array_equal(a, runs[1][name], err_msg=name)


def test_ctrl_c_stops_the_workers_and_saves(tmp_path, rng):
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it: the workers ignore
    it, the trainer stops between two steps, saves, exits 130, and no worker is left."""
    import signal
    import subprocess
    import sys
    import time
    _augmented_folder(tmp_path / "d", rng, n=20)
    metrics, ck = tmp_path / "m.json", tmp_path / "ck.npz"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
         os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpucnn", "train", "--dataset", "folder", "--data-dir",
         str(tmp_path / "d"), "--input", "3,28,28", "--augment", "random-resized-crop",
         "--workers", "2", "--batch-size", "4", "--epochs", "1000", "--backend", "numpy",
         "--no-progress", "--checkpoint", str(ck), "--metrics-json", str(metrics)],
        start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while not metrics.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert metrics.exists(), proc.communicate(timeout=30)[0].decode()[-2000:]
        os.killpg(proc.pid, signal.SIGINT)
        out = proc.communicate(timeout=60)[0].decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out[-2000:]
    assert "SIGINT at epoch" in out and "checkpoint written" in out
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the workers go with the trainer
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("input workers outlived the trainer")
    from gpucnn.checkpoint import open_checkpoint
    with open_checkpoint(ck) as c:
        assert c.metadata["epoch"] >= 1


def test_cache_decoded_gives_the_same_training_and_follows_the_files(tmp_path, rng,
                                                                     monkeypatch):
    from gpucnn.data.decoded_cache import DecodedCache, cache_dir
    from gpucnn.train import Trainer
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _augmented_folder(tmp_path / "d", rng, n=8)
    (tmp_path / "d" / "train" / "x" / "bad.png").write_bytes(b"not a png")
    runs = []
    for workers, cached in ((0, False), (0, True), (2, True), (1, True)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tr = Trainer(_augmented_cfg(tmp_path / "d", workers=workers, epochs=1,
                                        cache_decoded=cached))
        assert sum("bad.png" in str(w.message) for w in caught) == 1  # from the cache too
        tr.fit()
        runs.append(_params(tr))
        if workers:
            tr.train_set.pipeline.close()
    for run in runs[1:]:
        for name, a in runs[0].items():
            np.testing.assert_array_equal(a, run[name], err_msg=name)
    files = sorted(p.name for p in cache_dir().iterdir())
    assert len(files) == 6 and not any(f.endswith(".tmp") for f in files)  # train and val
    # a hit: the same files give the same cache; a changed file gives a new one
    from concurrent.futures import ThreadPoolExecutor
    paths = sorted(str(p) for p in (tmp_path / "d" / "train" / "y").iterdir())
    with ThreadPoolExecutor(2) as pool:
        first, hit = DecodedCache.build(paths, 3, pool)
        assert not hit
        again, hit = DecodedCache.build(paths, 3, pool)
        assert hit and np.array_equal(again.image(3), first.image(3))
        np.testing.assert_array_equal(again.image(3), to_array(decode(paths[3], 3)))
        _png(paths[3], rng.integers(0, 256, (9, 9, 3), dtype=np.uint8))
        changed, hit = DecodedCache.build(paths, 3, pool)
        assert not hit and changed.image(3).shape == (3, 9, 9)
        # a damaged cache reads as no cache (rebuilt), never a traceback
        key_files = {p.suffix: p for p in cache_dir().iterdir()
                     if p.stem == Path(changed.index_path).stem}
        for damage in (b'{"x": "not an index"}', b"[" * 100000, b"\xff\xfe"):
            key_files[".json"].write_bytes(damage)
            rebuilt, hit = DecodedCache.build(paths, 3, pool)
            assert not hit and rebuilt.image(3).shape == (3, 9, 9)


def test_augmented_folder_statistics_come_from_a_bounded_seeded_sample(tmp_path, rng,
                                                                       monkeypatch):
    import gpucnn.data.folder as folder
    _augmented_folder(tmp_path / "d", rng)
    kw = dict(channels=3, input_size=(28, 28), val_split=0.25, augment="random-resized-crop")
    whole = load_folder(tmp_path / "d", **kw)
    assert whole.preprocess.stats == "computed from the 18 training images"
    # the same numbers as without augmentation, where every image is in memory
    plain = load_folder(tmp_path / "d", **dict(kw, augment="none"))
    assert plain.preprocess.mean == whole.preprocess.mean
    monkeypatch.setattr(folder, "STATS_MAX_BYTES", 3 * 28 * 28 * 10)  # room for 10 images
    a, b = load_folder(tmp_path / "d", **kw), load_folder(tmp_path / "d", **kw)
    assert a.preprocess.stats == "computed from 10 of the 18 training images (a seeded sample)"
    assert a.preprocess == b.preprocess and a.preprocess.mean != whole.preprocess.mean
    assert load_folder(tmp_path / "d", seed=1, **kw).preprocess.mean != a.preprocess.mean


def test_a_model_of_other_than_1_or_3_channels_is_named(tmp_path, capsys):
    for c in ("a", "b"):
        (tmp_path / "img" / "train" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "img" / "train" / c / f"{i}.png")
    assert main(["train", "--dataset", "folder", "--data-dir", str(tmp_path / "img"), "--input",
                 "2,8,8", "--backend", "numpy", "--no-progress"]) == 2
    assert "--input takes 2 input channels; the images of an image folder give 1 (grey) or 3" \
        in capsys.readouterr().err
