"""Fault injection (issue 9): the ways a run could lose, overwrite or corrupt what a user saved,
tried on purpose. Each case asserts the clear message, the exit code and that no saved file
changed.

Runs on a tiny synthetic Fashion-MNIST (``--data-dir``, 64 training images in batches of 16)
so the whole module takes well under a minute. CLI cases go through ``gpucnn.cli.main`` in
this process, or ``python -m gpucnn`` in a subprocess where the case needs a signal, a
resource limit or a fresh process. CI runs as root, where permission bits stop nothing:
unwritable places are a path under a regular file, a directory where the file should be, a
patched write that fails with ENOSPC/EROFS, ``ulimit -f`` (RLIMIT_FSIZE) and, where mounting is
allowed, a 700 KiB tmpfs.
"""
import contextlib
import errno
import io
import json
import os
import random
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from gpucnn import checkpoint as ckpt
from gpucnn import outputs
from gpucnn.backends.emu import EmuModule, cache as emu_cache
from gpucnn.checkpoint import load_checkpoint, save_checkpoint
from gpucnn.cli import main
from gpucnn.data import encode_idx
from gpucnn.models import lenet5
from gpucnn.optim import SGD, Adam
from gpucnn.runsafety import RunLock, lock_path
from gpucnn.train import TrainConfig, Trainer, TrainingDiverged, TrainingInterrupted

ROOT = Path(__file__).resolve().parents[1]
BASE = ["train", "--backend", "numpy", "--limit", "64", "--test-limit", "32", "--batch-size",
        "16", "--no-progress", "--save-retry-s", "0.05"]
OUTPUT_FLAGS = ["--checkpoint", "--metrics-json", "--plot"]


# ---- helpers -------------------------------------------------------------------------------
def write_split(directory, rng, prefix, n, labels=None):
    directory.mkdir(parents=True, exist_ok=True)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8) if labels is None else labels
    (directory / f"{prefix}-images-idx3-ubyte").write_bytes(encode_idx(images))
    (directory / f"{prefix}-labels-idx1-ubyte").write_bytes(encode_idx(labels))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(9)
    write_split(root / "fashion-mnist", rng, "train", 96)
    write_split(root / "fashion-mnist", rng, "t10k", 32)
    return str(root)


def cli(data_dir, *args):
    """(exit code, stdout, stderr) of ``gpucnn train`` run in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([*BASE, "--data-dir", data_dir, *map(str, args)])
    return rc, out.getvalue(), err.getvalue()


def files(directory):
    """Every file under ``directory`` with its bytes: what 'nothing changed' compares."""
    d = Path(directory)
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def error_lines(err):
    return [line for line in err.splitlines() if line.startswith("gpucnn train: error:")]


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """A one-epoch checkpoint of this module's run configuration (read-only: copy it)."""
    path = tmp_path_factory.mktemp("trained") / "ck.npz"
    rc, _, err = cli(data_dir, "--checkpoint", path)
    assert rc == 0, err
    return path


@pytest.fixture
def ck(trained, tmp_path):
    path = tmp_path / "ck.npz"
    shutil.copy(trained, path)
    return path


def assert_finite_checkpoint(path):
    arrays, meta = load_checkpoint(path)
    assert all(np.isfinite(a).all() for a in arrays.values() if a.dtype.kind == "f")
    return meta


class Run:
    """``python -m gpucnn train`` in a subprocess, its output collected as it comes."""

    def __init__(self, data_dir, *args, preexec_fn=None):
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get(
            "PYTHONPATH", ""))
        env.pop("GPUCNN_BACKEND", None)
        self.p = subprocess.Popen([sys.executable, "-m", "gpucnn", *BASE, "--data-dir",
                                   data_dir, *map(str, args)], cwd=ROOT, env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  preexec_fn=preexec_fn)
        self.out, self.err = [], []
        self.readers = [threading.Thread(target=self._read, args=(s, buf), daemon=True)
                        for s, buf in ((self.p.stdout, self.out), (self.p.stderr, self.err))]
        for t in self.readers:
            t.start()

    @staticmethod
    def _read(stream, buf):
        for line in stream:
            buf.append(line)

    def wait_for(self, condition, what, timeout=90):
        deadline = time.monotonic() + timeout
        while not condition():
            if self.p.poll() is not None:
                raise AssertionError(f"exited with {self.p.returncode} before {what}:\n"
                                     + "".join(self.err))
            if time.monotonic() > deadline:
                self.p.kill()
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.02)

    def started(self):  # the "data:" line comes once the data are loaded, before training
        self.wait_for(lambda: any(line.startswith("data:") for line in self.out), "training")

    def finish(self, timeout=90):
        rc = self.p.wait(timeout)
        for t in self.readers:
            t.join(10)
        return rc, "".join(self.out), "".join(self.err)


# ---- 1. an existing checkpoint is never replaced by another run ----------------------------
def test_existing_checkpoint_is_never_replaced_silently(data_dir, ck):
    before = files(ck.parent)
    rc, out, err = cli(data_dir, "--checkpoint", ck, "--epochs", "1")
    assert rc == 2 and "already exists" in err and "--resume" in err and "--overwrite" in err
    assert "data:" not in out  # refused before any work
    assert files(ck.parent) == before
    rc, _, err = cli(data_dir, "--checkpoint", ck, "--overwrite", "--seed", "5")
    assert rc == 0, err
    assert load_checkpoint(ck)[1]["config"]["seed"] == 5  # replaced, as asked


def test_second_run_on_a_locked_checkpoint_fails_at_start(data_dir, ck):
    before = files(ck.parent)
    with RunLock(ck):
        rc, out, err = cli(data_dir, "--checkpoint", ck, "--resume", "--epochs", "2")
    assert rc == 2 and "data:" not in out
    assert f"in use by another training run (pid {os.getpid()} on" in err
    assert files(ck.parent) == before
    rc, _, err = cli(data_dir, "--checkpoint", ck, "--resume", "--epochs", "2")
    assert rc == 0, err  # released: the next run proceeds
    assert not lock_path(ck).exists()


# ---- 2. every output path is checked at start --------------------------------------------
@pytest.mark.parametrize("flag", OUTPUT_FLAGS)
def test_output_path_whose_parent_is_a_file(data_dir, tmp_path, flag):
    (tmp_path / "afile").write_text("precious")
    before = files(tmp_path)
    rc, out, err = cli(data_dir, flag, tmp_path / "afile" / "out.x")
    assert rc == 2 and f"{flag} " in err and "afile is a file, not a directory" in err
    assert "data:" not in out and files(tmp_path) == before


@pytest.mark.parametrize("flag", OUTPUT_FLAGS)
def test_output_path_that_is_a_directory(data_dir, tmp_path, flag):
    (tmp_path / "adir").mkdir()
    rc, out, err = cli(data_dir, flag, tmp_path / "adir")
    assert rc == 2 and f"{flag} {tmp_path / 'adir'}: is a directory" in err
    assert "data:" not in out and files(tmp_path) == {}


@pytest.mark.parametrize("flag", OUTPUT_FLAGS)
def test_output_directory_that_refuses_files(data_dir, tmp_path, flag, monkeypatch):
    """A read-only mount, simulated: creating a file under tmp_path fails with EROFS."""
    real = outputs.tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and str(dir).startswith(str(tmp_path)):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(outputs.tempfile, "mkstemp", read_only)
    rc, out, err = cli(data_dir, flag, tmp_path / "out.png")
    assert rc == 2 and "Read-only file system (EROFS); nothing was trained" in err
    assert "data:" not in out and files(tmp_path) == {}


def test_two_outputs_naming_one_file(data_dir, tmp_path):
    rc, _, err = cli(data_dir, "--checkpoint", tmp_path / "x", "--metrics-json", tmp_path / "x")
    assert rc == 2 and "--checkpoint and --metrics-json both name" in err
    assert files(tmp_path) == {}


def test_metrics_and_plot_never_replace_a_checkpoint(data_dir, ck, tmp_path):
    """The fuzzer's data loss: --metrics-json naming an existing checkpoint replaced it."""
    before = files(ck.parent)
    for flag in ("--metrics-json", "--plot"):
        for extra in ([], ["--overwrite"]):
            rc, out, err = cli(data_dir, "--checkpoint", tmp_path / "new.npz", flag, ck, *extra)
            assert rc == 2 and error_lines(err) == [line for line in err.splitlines() if line]
            assert f"{flag} {ck}: " in err and "data:" not in out
    rc, _, err = cli(data_dir, "--checkpoint", "")
    assert rc == 2 and "--checkpoint '': an empty file name" in err
    assert files(ck.parent) == before


def test_training_through_a_symlink_writes_the_file_it_points_to(data_dir, ck, tmp_path):
    link = tmp_path / "link.npz"
    link.symlink_to(ck)
    rc, _, err = cli(data_dir, "--checkpoint", link, "--resume", "--epochs", "2")
    assert rc == 0, err
    assert link.is_symlink() and assert_finite_checkpoint(ck)["epoch"] == 2
    assert not lock_path(ck).exists() and not lock_path(link).exists()


# ---- 3. a write that fails later: one line, exit 2, one retry, the old file kept -----------
@pytest.mark.parametrize("failures", [2, 1])
def test_disk_full_while_saving(data_dir, ck, monkeypatch, failures):
    before = files(ck.parent)
    real = ckpt.np.lib.format.write_array
    failed = []

    def full(fp, array, *args, **kwargs):
        if len(failed) < failures:
            failed.append(1)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fp, array, *args, **kwargs)

    monkeypatch.setattr(ckpt.np.lib.format, "write_array", full)
    rc, _, err = cli(data_dir, "--checkpoint", ck, "--resume", "--epochs", "2")
    assert "retrying once in 0.05 s (the trained state is kept in memory)" in err
    assert "Traceback" not in err
    if failures == 2:
        assert rc == 2
        assert error_lines(err) == [f"gpucnn train: error: could not write checkpoint {ck}: No "
                                    f"space left on device (ENOSPC); the previous checkpoint "
                                    f"{ck} is kept unchanged"]
        assert files(ck.parent) == before  # no temporary file left either
    else:
        assert rc == 0, err  # the retry, with the state kept in memory, wrote epoch 2
        assert assert_finite_checkpoint(ck)["epoch"] == 2


def test_metrics_write_failure_keeps_the_previous_metrics(data_dir, ck, monkeypatch):
    metrics = ck.parent / "m.json"
    metrics.write_text('{"schema": "gpucnn-train-metrics/1", "previous": true}')
    before = metrics.read_bytes()

    def full(path, m):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("gpucnn.train.write_metrics", full)
    rc, _, err = cli(data_dir, "--checkpoint", ck, "--resume", "--epochs", "2",
                     "--metrics-json", metrics)
    assert rc == 2 and error_lines(err) == [
        f"gpucnn train: error: could not write metrics {metrics}: No space left on device "
        f"(ENOSPC); the previous {metrics} is kept unchanged"]
    assert metrics.read_bytes() == before


def _env_with_repo():
    return dict(os.environ, PYTHONPATH=str(ROOT))


def test_file_size_limit_refused_at_start(data_dir, ck):
    """``ulimit -f`` below the checkpoint's size: refused before training, not after."""
    before = files(ck.parent)

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100 * 1024, 100 * 1024))

    run = Run(data_dir, "--checkpoint", ck, "--resume", "--epochs", "2", preexec_fn=limit)
    rc, out, err = run.finish()
    assert rc == 2, err
    assert re.search(r"needs about [\d.]+ KiB but the file-size limit \(ulimit -f\) is 100.0 "
                     r"KiB", err)
    assert "epoch 2" not in out and files(ck.parent) == before


def test_file_size_limit_reached_mid_run(data_dir, tmp_path):
    """RLIMIT_FSIZE lowered on the running process (prlimit): the next checkpoint write gets
    SIGXFSZ, ignored, so EFBIG: reported in one line, exit 2, the last checkpoint kept."""
    ck = tmp_path / "ck.npz"
    run = Run(data_dir, "--checkpoint", ck, "--epochs", "500")
    run.wait_for(ck.exists, "the first checkpoint")
    try:
        resource.prlimit(run.p.pid, resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
    except (PermissionError, OSError) as e:
        run.p.kill()
        run.finish()
        pytest.skip(f"cannot lower the file-size limit of a running process here: {e}")
    time.sleep(0.5)  # a write whose last byte had already gone out may still land
    before = ck.read_bytes()
    rc, _, err = run.finish()
    assert rc == 2, err
    assert error_lines(err) == [f"gpucnn train: error: could not write checkpoint {ck}: File "
                                f"too large (EFBIG); the previous checkpoint {ck} is kept "
                                f"unchanged"]
    assert ck.read_bytes() == before
    assert_finite_checkpoint(ck)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.npz"]


def test_full_tmpfs(data_dir, tmp_path):
    """A real full disk: a 700 KiB tmpfs holds one checkpoint of ~490 KiB but not the second
    one beside it (the old one stays until the new one is complete)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=700k", "tmpfs", str(mnt)],
                           capture_output=True, text=True)
        reason = r.stderr.strip() if r.returncode else None
    except OSError as e:
        reason = str(e)
    if reason is not None:
        reason = (f"cannot mount a tmpfs here ({reason}); the full disk is covered by "
                  f"test_disk_full_while_saving")
        print(reason)
        pytest.skip(reason)
    try:
        rc, _, err = cli(data_dir, "--checkpoint", mnt / "ck.npz", "--epochs", "3")
        assert rc == 2 and len(error_lines(err)) == 1
        assert "No space left on device (ENOSPC); the previous checkpoint" in err
        assert assert_finite_checkpoint(mnt / "ck.npz")["epoch"] == 1
        assert sorted(p.name for p in mnt.iterdir()) == ["ck.npz"]
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


# ---- 4. killed, interrupted, concurrent ---------------------------------------------------
def test_sigkill_at_random_points_loses_nothing(data_dir, tmp_path):
    """Killed at random moments (some mid-write): the checkpoint is always a complete, finite
    one; a second run meanwhile is refused; the next run takes the stale lock over and
    removes the temporary files of dead writers (not those of live ones)."""
    ck = tmp_path / "ck.npz"
    rng = random.Random(2024)
    last_epoch = 0
    for i in range(3):
        run = Run(data_dir, "--checkpoint", ck, "--epochs", "500",
                  *(["--resume"] if ck.exists() else []))
        run.started()
        if i == 0:
            rc, _, err = cli(data_dir, "--checkpoint", ck, "--overwrite")
            assert rc == 2 and f"in use by another training run (pid {run.p.pid} on" in err
        time.sleep(rng.uniform(0.2, 1.2))
        run.p.kill()
        assert run.finish()[0] == -signal.SIGKILL
        if ck.exists():
            epoch = assert_finite_checkpoint(ck)["epoch"]
            assert epoch >= last_epoch
            last_epoch = epoch
    assert last_epoch >= 1 and lock_path(ck).exists()  # the kill left a stale lock
    dead = tmp_path / f".ck.npz.{2 ** 22 + 12345}.abcd.tmp"  # above pid_max: never alive
    live = tmp_path / f".ck.npz.{os.getpid()}.efgh.tmp"
    dead.write_bytes(b"partial")
    live.write_bytes(b"being written")
    rc, out, err = cli(data_dir, "--checkpoint", ck, "--resume", "--epochs", last_epoch + 1)
    assert rc == 0, err
    assert "took over the lock of an earlier run that is no longer running" in out
    assert "removed" in out and dead.name in out
    assert not dead.exists() and live.exists()
    assert [p.name for p in tmp_path.glob(".ck.npz.*.tmp")] == [live.name]
    assert not lock_path(ck).exists()
    assert assert_finite_checkpoint(ck)["epoch"] == last_epoch + 1


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_a_checkpoint_that_resumes(data_dir, tmp_path, sig, code):
    ck = tmp_path / "ck.npz"
    run = Run(data_dir, "--checkpoint", ck, "--epochs", "500")
    run.wait_for(ck.exists, "the first checkpoint")
    run.p.send_signal(sig)
    rc, out, err = run.finish()
    assert rc == code, err
    assert f"{sig.name} at epoch" in out and "continue with --resume" in out
    meta = assert_finite_checkpoint(ck)
    rc, _, err = cli(data_dir, "--checkpoint", ck, "--resume", "--epochs", meta["epoch"] + 1)
    assert rc == 0, err


def _trainer(data_dir, **kw):
    base = dict(model="lenet5", dataset="fashion-mnist", data_dir=data_dir, epochs=1,
                batch_size=16, limit=64, test_limit=32, backend="numpy", progress=False)
    return Trainer(TrainConfig(**{**base, **kw}))


def test_interrupt_after_a_nan_never_saves_it(data_dir, ck):
    """check_every > 1 (the cuda default): a NaN batch, then Ctrl-C before the losses were
    read. The pending losses are checked before saving: TrainingDiverged, file untouched."""
    before = files(ck.parent)
    tr = _trainer(data_dir, checkpoint=str(ck), check_every=4)
    tr.train_x[:] = np.nan

    def ctrl_c(t):
        if t.batch_in_epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(TrainingDiverged, match="loss became nan"):
        tr.fit(on_step=ctrl_c)
    assert files(ck.parent) == before


def test_second_signal_stops_at_once_without_saving(data_dir, ck):
    """What the handler raises on a second Ctrl-C/SIGTERM, mid-step: nothing is saved."""
    before = files(ck.parent)
    tr = _trainer(data_dir, checkpoint=str(ck), epochs=2)

    def second_signal(t):
        raise TrainingInterrupted(signal.SIGTERM, immediate=True)

    with pytest.raises(TrainingInterrupted):
        tr.fit(on_step=second_signal)
    assert files(ck.parent) == before


def test_non_finite_state_is_never_saved(data_dir, ck):
    before = files(ck.parent)
    tr = _trainer(data_dir, checkpoint=str(ck))
    tr.model.parameters()[2].data[0, 0, 0, 0] = np.inf
    with pytest.raises(TrainingDiverged, match=r"model/3\.weight holds NaN or inf: checkpoint "
                                               r".* was not written"):
        tr.save()
    assert files(ck.parent) == before


def test_diverging_run_prints_one_line(data_dir, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc, _, err = cli(data_dir, "--lr", "1e5", "--epochs", "8", "--batch-size", "64",
                         "--checkpoint", tmp_path / "ck.npz")
    assert rc == 3
    assert err.splitlines() == [line for line in err.splitlines() if "loss became" in line]
    assert len(err.splitlines()) == 1 and "stopped: the training loss became" in err
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]


# ---- 5. --resume: the run configuration and the metadata are checked first ------------------
def test_resume_refuses_a_different_run_configuration(data_dir, ck, tmp_path):
    before = files(ck.parent)
    rc, out, err = cli(data_dir, "--checkpoint", ck, "--resume", "--epochs", "2",
                       "--batch-size", "32", "--seed", "1", "--limit", "48")
    assert rc == 2, err
    for diff in ("batch_size: checkpoint 16, now 32", "seed: checkpoint 0, now 1",
                 "limit: checkpoint 64, now 48", "--allow-config-change"):
        assert diff in err
    assert files(ck.parent) == before
    metrics = tmp_path / "m.json"
    rc, _, err = cli(data_dir, "--checkpoint", ck, "--resume", "--epochs", "2",
                     "--batch-size", "32", "--allow-config-change", "--metrics-json", metrics)
    assert rc == 0, err
    change = {"config.batch_size": {"checkpoint": 16, "now": 32}}
    assert json.loads(metrics.read_text())["config_changes"] == [
        {"epoch": 1, "batch_in_epoch": 0, "changes": change}]
    assert load_checkpoint(ck)[1]["config_changes"][0]["changes"] == change


def test_resume_allows_more_epochs_but_not_another_schedule(data_dir, ck):
    rc, _, err = cli(data_dir, "--checkpoint", ck, "--resume", "--epochs", "4",
                     "--schedule", "cosine")
    assert rc == 2 and "schedule: checkpoint 'constant', now 'cosine'" in err
    rc, _, err = cli(data_dir, "--checkpoint", ck, "--resume", "--epochs", "2",
                     "--test-limit", "16", "--save-retry-s", "1")
    assert rc == 0, err  # more epochs, fewer test images, another retry pause: allowed


DELETE = object()
CRAFTED = [
    ("batch_in_epoch", 10 ** 6, "'batch_in_epoch' is 1000000: it must be an int in [0, 4]"),
    ("batch_in_epoch", -3, "'batch_in_epoch' is -3"),
    ("epoch_sums", [1.0], "'epoch_sums' is [1.0]: it must be a list of 4 numbers"),
    ("history", {"a": 1}, "'history' is {'a': 1}"),
    ("history", DELETE, "metadata has no 'history' field"),
    ("epoch", "1", "'epoch' is '1': it must be an int"),
    ("epoch", 7, "'history'"),  # seven epochs done but one record
    ("optimizer", {"type": "SGD", "lr": -1.0, "steps": 4}, "'optimizer.lr' is -1.0"),
    ("model_extra", {"3": {"calls": -1}}, "'model_extra'"),
    ("schema_version", 99, "schema 99 was written by a newer gpucnn"),
    ("model", {"name": "lenet5", "kwargs": {"num_classes": 7}, "input_shape": [1, 28, 28]},
     "does not fit the model"),
    ("model/0.bias", np.full(6, np.nan, np.float32), "array 'model/0.bias' holds NaN or inf"),
]


@pytest.mark.parametrize("field, value, message", CRAFTED,
                         ids=[f"{f}={'deleted' if v is DELETE else str(v)[:20]}"
                              for f, v, _ in CRAFTED])
def test_crafted_metadata_is_refused_before_use(data_dir, trained, tmp_path, field, value,
                                                message):
    arrays, meta = load_checkpoint(trained)
    target = arrays if field in arrays else meta
    if value is DELETE:
        del target[field]
    else:
        target[field] = value
    ck = tmp_path / "ck.npz"
    save_checkpoint(ck, arrays, meta)
    before = files(tmp_path)
    rc, _, err = cli(data_dir, "--checkpoint", ck, "--resume", "--epochs", "8")
    assert rc == 2, err
    assert message in err and "Traceback" not in err
    assert files(tmp_path) == before  # never rewritten before it validated


def test_npy_header_declaring_4_tib_is_refused_before_allocating(data_dir, trained, tmp_path):
    ck = tmp_path / "ck.npz"
    with zipfile.ZipFile(trained) as src, zipfile.ZipFile(ck, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "model/0.weight.npy":
                f = io.BytesIO()
                np.lib.format.write_array_header_1_0(
                    f, {"descr": "<f4", "fortran_order": False, "shape": (2 ** 40,)})
                data = f.getvalue() + b"\0" * 600
            dst.writestr(name, data)
    before = files(tmp_path)
    rc, _, err = cli(data_dir, "--checkpoint", ck, "--resume", "--epochs", "2")
    assert rc == 2
    assert ("member 'model/0.weight.npy': header declares shape (1099511627776,) float32 = "
            "4.0 TiB, but the member holds 600 bytes of data") in err
    assert files(tmp_path) == before


# ---- 6. the emulator's cache heals -------------------------------------------------------
VEC_ADD = """extern "C" __global__ void vec_add(const float* a, float* b, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) b[i] = a[i] + 1.0f;
}
"""


@pytest.fixture(scope="module")
def vec_add_cu(tmp_path_factory):
    """The kernel as a file: cache keys then do not depend on where the cache is (a source
    text is stored in the cache, and its path is part of the key)."""
    path = tmp_path_factory.mktemp("kernel") / "vec_add.cu"
    path.write_text(VEC_ADD)
    return path


def vec_add(source):
    a = np.arange(8, dtype=np.float32)
    b = np.zeros(8, np.float32)
    EmuModule([source]).get_function("vec_add")(1, 8, (a, b, np.int32(8)))
    np.testing.assert_array_equal(b, a + 1)


@pytest.fixture(scope="module")
def built_cache(tmp_path_factory, vec_add_cu):
    root = tmp_path_factory.mktemp("emu-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPUCNN_CACHE_DIR", str(root))
        vec_add(vec_add_cu)
    return root


@pytest.fixture
def cache_copy(built_cache, tmp_path, monkeypatch):
    root = tmp_path / "cache"
    shutil.copytree(built_cache, root)
    monkeypatch.setenv("GPUCNN_CACHE_DIR", str(root))
    return root / "emu"


def replace(path, data):
    """New content under the old name (a new file: a library this process has loaded stays
    intact, as it would for another process)."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


DAMAGE = {
    "zero": lambda good: b"",
    "garbage": lambda good: np.random.default_rng(4096).bytes(4096),  # the same every run
    "truncated": lambda good: good[: len(good) // 2],
    "foreign": lambda good: Path(sys.executable).read_bytes()[:200000],
    "bit flip": lambda good: good[:-100] + bytes([good[-100] ^ 1]) + good[-99:],
}


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("entry", ["library", "object", "object, no library"])
def test_damaged_emulator_cache_entry_is_rebuilt(cache_copy, vec_add_cu, entry, damage):
    so = next(cache_copy.glob("mod_*.so"))
    target = so if entry == "library" else next(cache_copy.glob("obj/k_vec_add_*.o"))
    if entry == "object, no library":
        so.unlink()  # the link needs the object: a damaged one failed it on every run
    replace(target, DAMAGE[damage](target.read_bytes()))
    with pytest.warns(RuntimeWarning, match=re.escape(f"cache entry {target} is damaged")):
        vec_add(vec_add_cu)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vec_add(vec_add_cu)  # healed: no warning the second time


@pytest.mark.parametrize("content", [b"{not json", b'{"undef": ["x; rm -rf /"], "defined": []}',
                                     b'{"undef": [], "defined": [[7, 0, 4]]}', b"[]"],
                         ids=["not json", "bad undef name", "bad defined name", "not an object"])
def test_damaged_symbol_sidecar_is_read_again(cache_copy, vec_add_cu, content):
    """The TLS symbol table cached beside an object feeds generated assembly: a damaged one is
    ignored (the object is read again), so the library links and runs."""
    sides = list(cache_copy.glob("obj/*.tls.json"))
    assert sides, "the build caches the objects' TLS symbols beside them"
    for side in sides:
        replace(side, content)
    next(cache_copy.glob("mod_*.so")).unlink()  # the link reads the sidecars again
    vec_add(vec_add_cu)


def test_corrupt_module_record_is_rebuilt(cache_copy, vec_add_cu):
    meta = next(cache_copy.glob("mod_*.json"))
    replace(meta, b"{not json")
    with pytest.warns(RuntimeWarning, match=re.escape(f"{meta} is damaged (not valid JSON")):
        vec_add(vec_add_cu)
    assert emu_cache.module_record(meta) is not None


def test_truncated_library_in_a_new_process_is_rebuilt_not_a_crash(cache_copy, vec_add_cu):
    """The original failure: a fresh process dlopen'ed the truncated file and died of SIGBUS
    (exit 135, no message)."""
    so = next(cache_copy.glob("mod_*.so"))
    replace(so, so.read_bytes()[: so.stat().st_size // 3])
    code = ("import numpy as np; from gpucnn.backends.emu import EmuModule; "
            f"m = EmuModule([{str(vec_add_cu)!r}]); print(sorted(m.kernel_names))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env=dict(_env_with_repo(), GPUCNN_CACHE_DIR=str(cache_copy.parent)),
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "['vec_add']" in r.stdout
    assert f"cache entry {so} is damaged (truncated" in r.stderr


def test_unwritable_emulator_cache_falls_back_with_one_warning(tmp_path, monkeypatch,
                                                              vec_add_cu):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("GPUCNN_CACHE_DIR", str(blocker))
    with pytest.warns(RuntimeWarning, match=re.escape(f"cache {blocker}/emu is not writable")):
        vec_add(vec_add_cu)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vec_add(vec_add_cu)  # the same fallback, no second warning


def test_read_only_emulator_cache_falls_back(tmp_path, monkeypatch, vec_add_cu):
    """Root ignores permission bits: a read-only mount, simulated by a failing mkstemp."""
    ro = tmp_path / "ro"
    real = emu_cache.tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and str(dir).startswith(str(ro)):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(emu_cache.tempfile, "mkstemp", read_only)
    monkeypatch.setenv("GPUCNN_CACHE_DIR", str(ro))
    with pytest.warns(RuntimeWarning, match=re.escape("not writable (Read-only file system)")):
        vec_add(vec_add_cu)


# ---- 7. data paths and labels --------------------------------------------------------------
def test_missing_data_dir_is_an_error_not_a_fallback(data_dir, tmp_path):
    rc, out, err = cli(str(tmp_path / "nope"), "--epochs", "1")
    assert rc == 2 and "not found in --data-dir" in err
    assert str(tmp_path / "nope" / "fashion-mnist") in err and "nothing else was searched" in err
    assert "data:" not in out


def test_incomplete_data_dir_names_the_missing_split(data_dir, tmp_path):
    half = tmp_path / "half" / "fashion-mnist"
    half.mkdir(parents=True)
    for f in Path(data_dir, "fashion-mnist").glob("train-*"):
        shutil.copy(f, half)
    rc, _, err = cli(str(tmp_path / "half"), "--epochs", "1")
    assert rc == 2 and "holds the train split but not the test split" in err
    assert "t10k-images-idx3-ubyte" in err


def test_run_says_which_files_it_used(data_dir, tmp_path):
    metrics = tmp_path / "m.json"
    rc, out, err = cli(data_dir, "--metrics-json", metrics)
    assert rc == 0, err
    d = Path(data_dir, "fashion-mnist")
    used = json.loads(metrics.read_text())["data_files"]
    assert used == {"train": [str(d / "train-images-idx3-ubyte"),
                              str(d / "train-labels-idx1-ubyte")],
                    "test": [str(d / "t10k-images-idx3-ubyte"),
                             str(d / "t10k-labels-idx1-ubyte")]}
    assert f"data: fashion-mnist, train 64 images from {used['train'][0]}" in out


def test_label_out_of_range_in_the_files(tmp_path):
    rng = np.random.default_rng(3)
    d = tmp_path / "fashion-mnist"
    write_split(d, rng, "train", 20, labels=np.array([1] * 19 + [12], np.uint8))
    write_split(d, rng, "t10k", 8)
    rc, _, err = cli(str(tmp_path), "--epochs", "1")
    assert rc == 2 and "train-labels-idx1-ubyte: label 12 at index 19 is out of range" in err


def test_labels_out_of_range_are_one_error_on_every_backend(numpy_backend, reference_backend,
                                                            device_forward, rng):
    """numpy and reference raise at once; a device flags it and raises at the next check."""
    logits = rng.standard_normal((3, 4)).astype(np.float32)
    labels = np.array([0, 7, -1], np.int32)
    want = "labels must lie in [0, 4) for 4 classes, got out-of-range labels -1 to 7"
    for B in (numpy_backend, reference_backend):
        with pytest.raises(ValueError) as e:
            B.softmax_cross_entropy(B.asarray(logits), B.asarray(labels, np.int32))
        assert str(e.value) == want
    D = device_forward
    D.softmax_cross_entropy(D.asarray(logits), D.asarray(labels))
    with pytest.raises(ValueError) as e:
        D.raise_device_errors()
    assert str(e.value).startswith(want)


def test_bad_label_on_the_emulator_stops_training_at_the_check(data_dir, tmp_path):
    ck = tmp_path / "ck.npz"
    tr = _trainer(data_dir, backend="emu", limit=32, test_limit=16, check_every=2,
                  checkpoint=str(ck))
    tr.train_y[3] = 12  # past the start-up check: as if device memory went bad
    with pytest.raises(ValueError, match="out-of-range labels 12 .flagged by the device"):
        tr.fit()
    assert not ck.exists()


def test_model_with_fewer_classes_than_the_labels(data_dir):
    with pytest.raises(ValueError, match=r"train split .*train-labels-idx1-ubyte\): labels must "
                                         r"lie in \[0, 5\).* num_classes=5"):
        _trainer(data_dir, model_kwargs={"num_classes": 5})


# ---- 8. the small ones -----------------------------------------------------------------------
@pytest.mark.parametrize("option, value, message", [
    ("--seed", "-1", "argument --seed: expected an integer >= 0 and <= 9223372036854775807, "
                     "got '-1'"),
    ("--lr", "nan", "argument --lr: expected a finite number > 0, got 'nan'"),
    ("--momentum", "inf", "argument --momentum: expected a finite number >= 0, got 'inf'"),
    ("--weight-decay", "-1e-4", "argument --weight-decay: expected a finite number >= 0"),
])
def test_bad_numbers_on_the_command_line_name_their_option(data_dir, option, value, message,
                                                           capsys):
    with pytest.raises(SystemExit) as e:
        main([*BASE, "--data-dir", data_dir, f"{option}={value}"])  # '=': argparse reads
        # "-1e-4" after a space as an option
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_non_finite_hyper_parameters_are_rejected_in_the_api(numpy_backend):
    B = numpy_backend
    p = np.ones(4, np.float32)
    nan, inf = float("nan"), float("inf")
    cases = [
        (lambda: B.sgd_update(p, p, p.copy(), nan), "sgd_update: lr must be a finite number"),
        (lambda: B.sgd_update(p, p, p.copy(), 0.1, momentum=inf), "momentum"),
        (lambda: B.sgd_update(p, p, p.copy(), 0.1, weight_decay=nan), "weight_decay"),
        (lambda: B.adam_update(p, p, p.copy(), p.copy(), 0.1, beta1=nan), "beta1"),
        (lambda: B.adam_update(p, p, p.copy(), p.copy(), 0.1, eps=inf), "eps"),
        (lambda: B.dropout(p, nan, 0), "dropout: p must be a finite number in [0, 1)"),
        (lambda: B.local_response_norm(np.ones((1, 3, 2, 2), np.float32), alpha=nan), "alpha"),
        (lambda: B.local_response_norm(np.ones((1, 3, 2, 2), np.float32), beta=inf), "beta"),
        (lambda: B.local_response_norm(np.ones((1, 3, 2, 2), np.float32), k=nan), "k must"),
    ]
    params = lenet5(backend=B).parameters()
    cases += [
        (lambda: SGD(params, nan, backend=B), "SGD: lr must be a finite number > 0"),
        (lambda: SGD(params, 0.1, momentum=inf, backend=B), "SGD: momentum"),
        (lambda: Adam(params, 0.1, betas=(nan, 0.9), backend=B), "Adam: betas"),
        (lambda: Adam(params, 0.1, eps=nan, backend=B), "Adam: eps"),
        (lambda: TrainConfig(seed=-1).validate(), "seed must be an integer >= 0"),
        (lambda: TrainConfig(momentum=nan).validate(), "momentum must be a finite number"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            call()
    assert np.array_equal(p, np.ones(4, np.float32))  # nothing was updated


def test_checkpoint_follows_the_umask(data_dir, tmp_path):
    old = os.umask(0o027)
    try:
        rc, _, err = cli(data_dir, "--checkpoint", tmp_path / "ck.npz")
    finally:
        os.umask(old)
    assert rc == 0, err
    assert stat.S_IMODE((tmp_path / "ck.npz").stat().st_mode) == 0o640  # mkstemp gave 0600

