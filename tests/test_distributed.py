"""gpucnn train --distributed under ``mpiexec -n 2`` on the CPU (issue 19): the same updates as
one process with the global batch, initial parameters broadcast, rank-0-only outputs, resume
across world sizes, an augmented image folder sharded over the ranks, and a failing or
mismatched rank ending the job with a clear message.

Every job runs from a subprocess with a hard timeout in its own process group, so a hang
fails the test instead of blocking the suite. mpiexec is the one of this Python environment
(``pip install '.[distributed]'`` puts it in its scripts folder), found there and not on PATH.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest

from harness import stable_seed

pytest.importorskip("mpi4py", reason="mpi4py is not installed: pip install '.[distributed]' "
                                     "(CI installs it)")

from gpucnn.checkpoint import load_checkpoint  # noqa: E402

def _mpiexec():
    """The environment's own mpiexec (pip puts it in the scripts folder of the scheme it
    installed into: the interpreter's, or the user's for pip install --user)."""
    for scheme in (None, f"{os.name}_user"):
        path = Path(sysconfig.get_path("scripts", scheme) if scheme else
                    sysconfig.get_path("scripts")) / "mpiexec"
        if path.exists():
            return path
    pytest.fail("mpi4py is installed but no mpiexec is in this environment's scripts folder: "
                "pip install '.[distributed]' (brings Open MPI's)", pytrace=False)


MPIEXEC = _mpiexec()
BOUND_S = 60  # a failed rank must end the whole job within this
ROOT = Path(__file__).resolve().parents[1]
# 2 x 64 against 1 x 128: the gradients are summed in another order (two halves, then their
# sum), so the parameters agree to float32 rounding, not bit for bit. Over many steps that
# rounding can be amplified: a unit whose input sits at a ReLU or max-pool boundary (LeNet-5's
# biases start at 0, and Fashion-MNIST's uniform background makes many inputs equal) may fall
# on the other side in one run, after which the runs drift apart like any two slightly
# different ones (measured: 5e-7 after 22 steps for this test's seed; with another data size,
# 1e-7 for 5 steps, then 4e-6 at step 6 and 1.4e-4 at step 11). So a few steps are held to
# rounding (STEP_ATOL) and 20+ steps to a bound a real error (one epoch short: 0.3; a wrong
# share of the global batch: larger) cannot meet (PARAM_ATOL).
STEP_ATOL = 1e-6
PARAM_ATOL = 1e-3


def _env(**extra):
    env = dict(os.environ, **extra, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PRTE_MCA_rmaps_default_mapping_policy=":oversubscribe",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("GPUCNN_NUMPY_THREADS", None)
    return env


def _session(sid):
    """The pids of session ``sid``: mpiexec and its ranks (each rank has its own process
    group, so killing mpiexec's group would leave them)."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and int((d / "stat").read_text().split(")")[-1].split()[3]) \
                    == sid:
                pids.append(int(d.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def kill_job(proc):
    """SIGKILL mpiexec and every rank it started (stopped ones too)."""
    for pid in _session(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def run(cmd, cwd, timeout=BOUND_S):
    """(returncode, stdout, stderr, seconds) of ``cmd``; a job still running after ``timeout``
    seconds is killed with its whole process group and fails the test."""
    t0 = time.monotonic()
    p = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_job(p)
        out, err = p.communicate()
        pytest.fail(f"{' '.join(map(str, cmd))} still running after {timeout} s (a hang):\n"
                    f"{out[-2000:]}\n{err[-2000:]}")
    return p.returncode, out, err, time.monotonic() - t0


def gpucnn(*args):
    return [sys.executable, "-m", "gpucnn", "train", "--backend", "numpy", "--no-progress",
            *args]


def mpi(n, *args):
    return [MPIEXEC, "-n", str(n), *gpucnn("--distributed", *args)]


@pytest.fixture
def seed(request):
    return str(stable_seed(request.node.nodeid) % 1000)


def params(path):
    arrays, meta = load_checkpoint(path)
    return {k: v for k, v in arrays.items() if k.startswith("model/")}, meta


def assert_close(a, b, atol=PARAM_ATOL):
    assert a.keys() == b.keys()
    worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    assert worst <= atol, f"parameters differ by {worst} (tolerance {atol})"
    return worst


# 11 global batches of 128 per epoch, the last one of 40 (split 20 + 20, weighted by size)
RUN = ("--limit", "1320", "--test-limit", "200", "--lr", "0.05")


def _one_process_and_two_ranks(tmp_path, common, batch, *two_args):
    """Two epochs of ``common`` in one process at ``batch`` (one/a.npz) and in two ranks at
    half of it each (two/b.npz, with ``two_args``): (one, two, the ranks' stdout)."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    rc, _, err, _ = run(gpucnn(*common, "--epochs", "2", "--batch-size", str(batch),
                               "--checkpoint", "a.npz"), one)
    assert rc == 0, err
    rc, out, err, _ = run(mpi(2, *common, "--epochs", "2", "--batch-size", str(batch // 2),
                              "--checkpoint", "b.npz", *two_args), two)
    assert rc == 0, err
    return one, two, out


def test_two_ranks_compute_the_updates_of_one_process_with_the_global_batch(tmp_path, seed):
    """2 x 64 == 1 x 128 after 22 LeNet-5 steps (2 epochs); only rank 0 prints and writes;
    resume across world sizes both ways gives the same parameters again."""
    common = (*RUN, "--seed", seed)
    one, two, out = _one_process_and_two_ranks(tmp_path, common, 128, "--metrics-json",
                                               "m.json")
    # rank 0 alone prints, and writes exactly its outputs (no temporary files left)
    assert out.count("data: fashion-mnist") == 1 and out.count("test accuracy") == 1, out
    assert sorted(os.listdir(two)) == ["b.npz", "m.json"]
    m = json.loads((two / "m.json").read_text())
    assert (m["world_size"], m["communicator"], m["global_batch"]) == (2, "mpi", 128)
    assert m["images_per_s_per_rank"] == pytest.approx(m["train_images_per_s"] / 2)
    assert m["allreduce_calls"] == 22  # one all-reduce of the flat buffer per step
    a, meta_a = params(one / "a.npz")
    b, meta_b = params(two / "b.npz")
    print(f"2 x 64 vs 1 x 128 after 22 steps: max |difference| {assert_close(a, b):.2e}")
    assert meta_b["data_parallel"] == {"world_size": 2, "global_batch": 128}
    assert meta_b["history"][1]["train_loss"] == pytest.approx(
        meta_a["history"][1]["train_loss"], rel=1e-5)

    # resume a 2-process checkpoint in 1 process, and a 1-process one in 2 processes
    for first, then in ((mpi(2, "--batch-size", "64"), gpucnn("--batch-size", "128")),
                        (gpucnn("--batch-size", "128"), mpi(2, "--batch-size", "64"))):
        d = tmp_path / f"resume{len(first)}"
        d.mkdir()
        rc, _, err, _ = run([*first, *common, "--epochs", "1", "--checkpoint", "c.npz"], d)
        assert rc == 0, err
        short = params(d / "c.npz")[0]  # one epoch short: the check can fail
        gap = max(float(np.max(np.abs(a[k] - short[k]))) for k in a)
        assert gap > 5 * PARAM_ATOL
        rc, _, err, _ = run([*then, *common, "--epochs", "2", "--checkpoint", "c.npz",
                             "--resume"], d)
        assert rc == 0, err
        assert_close(a, params(d / "c.npz")[0])

    # the global batch must match on resume (not the per-process one)
    rc, _, err, _ = run(gpucnn(*common, "--epochs", "3", "--batch-size", "64",
                               "--checkpoint", "b.npz", "--resume"), two)
    assert rc == 2 and "global_batch: checkpoint 128, now 64" in err, err
    # rank 0's start-up verdict on its outputs stops both ranks: one message, nothing touched
    before = {p.name: p.stat().st_mtime_ns for p in two.iterdir()}
    rc, _, err, _ = run(mpi(2, *common, "--batch-size", "64", "--checkpoint", "b.npz"), two)
    assert rc == 2 and err.count("gpucnn train: error: --checkpoint") == 1, err
    assert {p.name: p.stat().st_mtime_ns for p in two.iterdir()} == before


def test_three_ranks_weight_an_uneven_last_batch_by_its_real_sizes(tmp_path, seed):
    """3 x 32 == 1 x 96 over 136 images: the second global batch, of 40, is split 13 + 13 +
    14 and each rank's gradient weighted by its share, so each image counts as in one process
    (two steps: held to rounding)."""
    common = ("--limit", "136", "--test-limit", "60", "--epochs", "1", "--seed", seed,
              "--checkpoint", "ck.npz")
    one, three = tmp_path / "one", tmp_path / "three"
    one.mkdir(), three.mkdir()
    rc, _, err, _ = run(gpucnn(*common, "--batch-size", "96"), one)
    assert rc == 0, err
    rc, _, err, _ = run(mpi(3, *common, "--batch-size", "32"), three)
    assert rc == 0, err
    assert_close(params(one / "ck.npz")[0], params(three / "ck.npz")[0], STEP_ATOL)


def _image_folder(root, seed, n=12):
    """train/a and train/b of ``n`` random RGB PNGs each, of odd sizes."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for c in ("a", "b"):
        (root / "train" / c).mkdir(parents=True)
        for i in range(n):
            h, w = rng.integers(24, 40, 2)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                root / "train" / c / f"{i}.png")


def test_two_ranks_train_an_augmented_image_folder_as_one_process(tmp_path, seed):
    """--dataset folder --augment random-resized-crop, each rank's input worker decoding and
    augmenting only its part of each global batch: 2 x 4 == 1 x 8 over 18 images (global
    batches 8, 8, 2) for 2 epochs, and a 2-process run of 1 epoch resumed in 1 process too
    (six steps: held to rounding)."""
    _image_folder(tmp_path / "img", int(seed))
    common = ("--dataset", "folder", "--data-dir", tmp_path / "img", "--input", "3,28,28",
              "--augment", "random-resized-crop", "--val-split", "0.25", "--workers", "1",
              "--lr", "0.01", "--seed", seed)
    one, two, out = _one_process_and_two_ranks(tmp_path, common, 8)
    assert out.count("18 training and 6 validation images") == 1, out
    a, meta_a = params(one / "a.npz")
    b, meta_b = params(two / "b.npz")
    print(f"folder, 2 x 4 vs 1 x 8 after 6 steps: max |difference| "
          f"{assert_close(a, b, STEP_ATOL):.2e}")
    for ha, hb in zip(meta_a["history"], meta_b["history"], strict=True):
        assert hb["train_loss"] == pytest.approx(ha["train_loss"], rel=1e-5)
    rc, _, err, _ = run(mpi(2, *common, "--epochs", "1", "--batch-size", "4",
                            "--checkpoint", "c.npz"), two)
    assert rc == 0, err
    short = params(two / "c.npz")[0]  # one epoch short: the check can fail
    assert max(float(np.max(np.abs(a[k] - short[k]))) for k in a) > 100 * STEP_ATOL
    rc, _, err, _ = run(gpucnn(*common, "--epochs", "2", "--batch-size", "8",
                               "--checkpoint", "c.npz", "--resume"), two)
    assert rc == 0, err
    assert_close(a, params(two / "c.npz")[0], STEP_ATOL)


def test_initial_parameters_come_from_rank_0(tmp_path):
    """Rank 1's parameters and optimizer state, made different on purpose, are rank 0's after
    the broadcast (a script of the Python API under mpiexec)."""
    script = tmp_path / "bcast.py"
    script.write_text(
        "import numpy as np\n"
        "from gpucnn.distributed import init_world\n"
        "from gpucnn.distributed.trainer import DistributedTrainer\n"
        "from gpucnn.train import TrainConfig\n"
        "world = init_world()\n"
        "cfg = TrainConfig(backend='numpy', limit=256, test_limit=64, batch_size=32,\n"
        "                  progress=False)\n"
        "tr = DistributedTrainer(cfg, world)\n"
        "ps = tr.model.parameters()\n"
        "if world.rank == 1:\n"
        "    for p in ps:\n"
        "        p.data[...] += 1.0\n"
        "    tr.opt.state['velocity'][0][...] = 3.0\n"
        "    tr.opt.steps = 7\n"
        "before = world.allgather(float(sum(float(p.data.sum()) for p in ps)))\n"
        "tr.sync_state()\n"
        "after = world.allgather([p.data.copy() for p in ps])\n"
        "vel = world.allgather(float(tr.opt.state['velocity'][0].sum()))\n"
        "steps = world.allgather(tr.opt.steps)\n"
        "if world.rank == 0:\n"
        "    assert before[0] != before[1], before\n"
        "    assert all(np.array_equal(x, y) for x, y in zip(*after))\n"
        "    assert vel == [0.0, 0.0] and steps == [0, 0], (vel, steps)\n"
        "    print('broadcast ok')\n")
    rc, out, err, _ = run([MPIEXEC, "-n", "2", sys.executable, script], tmp_path)
    assert rc == 0 and "broadcast ok" in out, err


def test_a_rank_that_cannot_start_stops_every_rank_naming_it(tmp_path):
    """Rank 1 reads a damaged copy of the training images (a real fault, on one machine):
    every rank stops before training, status 2, rank 0 naming rank 1 and the file."""
    bad = tmp_path / "bad" / "fashion-mnist"
    bad.mkdir(parents=True)
    for f in Path("/usr/share/datasets/fashion-mnist").glob("*-ubyte.gz"):
        shutil.copy(f, bad / f.name)
    images = bad / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:5000])
    args = ("--limit", "256", "--test-limit", "64", "--batch-size", "32")
    cmd = [MPIEXEC, "-n", "1", *gpucnn("--distributed", *args), ":",
           "-n", "1", *gpucnn("--distributed", *args, "--data-dir", tmp_path / "bad")]
    rc, out, err, seconds = run(cmd, tmp_path)
    assert rc == 2 and seconds < BOUND_S, err
    assert "error: rank 1 could not start: DataError: " in err, err
    assert "train-images-idx3-ubyte.gz" in err and err.count("could not start") == 1


def test_a_rank_failing_mid_training_ends_the_job_naming_it(tmp_path):
    """Rank 0 cannot write its metrics at the end of epoch 1 (its file-size limit, ulimit -f,
    is 1 KiB: EFBIG) while rank 1 goes on to the next step: rank 0 names itself and aborts,
    and mpiexec ends both, non-zero, within the bound."""
    args = " ".join(gpucnn("--distributed", "--limit", "256", "--test-limit", "64",
                           "--batch-size", "32", "--epochs", "50", "--metrics-json", "m.json",
                           "--save-retry-s", "0"))
    cmd = [MPIEXEC, "-n", "1", "sh", "-c", f"ulimit -f 1; exec {args}", ":",
           "-n", "1", *args.split()]
    rc, out, err, seconds = run(cmd, tmp_path)
    assert rc != 0 and seconds < BOUND_S, err
    assert "rank 0 of 2 failed" in err and "File too large" in err, err
    assert "MPI_Abort" in err and not (tmp_path / "m.json").exists()


def test_ranks_that_disagree_stop_before_training_with_a_clear_error(tmp_path):
    """Rank 1 runs on another number of images: every rank stops, exit status 2, one
    message naming what differs on which rank."""
    base = ("--test-limit", "64", "--batch-size", "32")
    cmd = [MPIEXEC, "-n", "1", *gpucnn("--distributed", *base, "--limit", "256"), ":",
           "-n", "1", *gpucnn("--distributed", *base, "--limit", "320")]
    rc, out, err, seconds = run(cmd, tmp_path)
    assert rc == 2 and seconds < BOUND_S, err
    assert "train_images: rank 0 256, rank 1 320" in err, err
    assert err.count("disagree") == 1  # printed by rank 0 only
    assert not list(tmp_path.iterdir())


def _wait_for(path, proc, timeout=BOUND_S):
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None or time.monotonic() - t0 > timeout:
            kill_job(proc)
            pytest.fail(f"{path} never appeared: {proc.communicate()}")
        time.sleep(0.05)


def _rank_pid(launcher, rank):
    """The pid of rank ``rank``: a child of mpiexec with OMPI_COMM_WORLD_RANK=rank."""
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and int((d / "stat").read_text().split(")")[-1].split()[1]) \
                    == launcher and f"OMPI_COMM_WORLD_RANK={rank}\0".encode() \
                    in (d / "environ").read_bytes():
                return int(d.name)
        except (OSError, ValueError, IndexError):
            continue
    pytest.fail(f"no rank {rank} under mpiexec {launcher}")


# 10 global batches of 64 per epoch, many epochs: the job is stopped long before its end
LONG = ("--limit", "640", "--test-limit", "64", "--batch-size", "32", "--epochs", "500",
        "--checkpoint", "ck.npz", "--metrics-json", "m.json")


def _start(cwd, *args, **env):
    return subprocess.Popen([str(c) for c in mpi(2, *args)], cwd=cwd, env=_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _finish(proc):
    try:
        out, err = proc.communicate(timeout=BOUND_S)
    except subprocess.TimeoutExpired:
        kill_job(proc)
        pytest.fail(f"still running {BOUND_S} s after the signal: {proc.communicate()}")
    return proc.returncode, out, err


def test_sigterm_to_one_rank_stops_all_at_the_same_step_and_resumes_exactly(tmp_path, seed):
    stop = tmp_path / "stop"
    stop.mkdir()
    proc = _start(stop, *LONG, "--seed", seed)
    _wait_for(stop / "m.json", proc)  # an epoch is done: training is under way
    os.kill(_rank_pid(proc.pid, 1), signal.SIGTERM)
    rc, out, err = _finish(proc)
    assert rc == 143, err
    _, meta = params(stop / "ck.npz")
    epoch, batch = meta["epoch"], meta["batch_in_epoch"]
    assert f"SIGTERM at epoch {epoch + 1}, batch {batch}: checkpoint written" in out, out
    # resumed to the end of that epoch: the parameters of a run never stopped, bit for bit
    args = ("--limit", "640", "--test-limit", "64", "--batch-size", "32", "--seed", seed,
            "--epochs", str(epoch + 1), "--checkpoint", "ck.npz")
    rc, _, err, _ = run(mpi(2, *args, "--resume"), stop)
    assert rc == 0, err
    straight = tmp_path / "straight"
    straight.mkdir()
    rc, _, err, _ = run(mpi(2, *args), straight)
    assert rc == 0, err
    a, b = params(stop / "ck.npz")[0], params(straight / "ck.npz")[0]
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_ctrl_c_on_mpiexec_keeps_a_checkpoint_to_resume_from(tmp_path, seed):
    """Ctrl-C on mpiexec: Open MPI 5 sends SIGTERM to every rank and soon kills the job, so
    the stop's checkpoint may not be finished; the README promises the last complete one."""
    proc = _start(tmp_path, *LONG, "--seed", seed)
    _wait_for(tmp_path / "m.json", proc)
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGINT)
    rc, out, err = _finish(proc)
    assert rc != 0
    _, meta = params(tmp_path / "ck.npz")  # a complete checkpoint (atomic writes)
    assert meta["epoch"] >= 1
    rc, _, err, _ = run(mpi(2, *LONG[:6], "--seed", seed, "--epochs", str(meta["epoch"] + 1),
                            "--checkpoint", "ck.npz", "--resume"), tmp_path)
    assert rc == 0, err
    assert params(tmp_path / "ck.npz")[1]["epoch"] == meta["epoch"] + 1
    # a write the kill cut short left a temporary file at most, removed by the resume
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_info_shows_each_rank_and_the_communicator(tmp_path):
    rc, out, err, _ = run([MPIEXEC, "-n", "2", sys.executable, "-m", "gpucnn", "info",
                           "--backend", "numpy"], tmp_path)
    assert rc == 0, err
    for rank in (0, 1):
        assert f"; rank {rank} of 2 (local rank {rank} of 2)" in out, out
    assert out.count("communicator: --communicator auto is mpi (the numpy backend") == 2


def test_bench_reports_images_per_rank_scaling_and_allreduce_time(tmp_path):
    rc, out, err, _ = run([MPIEXEC, "-n", "2", sys.executable, "-m", "gpucnn", "bench",
                           "--distributed", "--backend", "numpy", "--batch-size", "16",
                           "--repeat", "3", "--warmup", "1", "--json", "b.json"], tmp_path)
    assert rc == 0, err
    r = json.loads((tmp_path / "b.json").read_text())
    assert (r["world_size"], r["communicator"], r["batch_per_process"]) == (2, "mpi", 16)
    assert r["images_per_s"] == pytest.approx(2 * r["images_per_s_per_rank"])
    assert r["scaling_efficiency"] == pytest.approx(r["images_per_s_per_rank"]
                                                    / r["one_process_images_per_s"])
    assert r["allreduce_ms_per_step"] > 0 and r["one_process_all_cores"]["batch"] == 32
    assert out.count("scaling efficiency") == 1  # rank 0 reports


def test_a_hung_rank_is_ended_by_the_watchdog(tmp_path, seed):
    """Rank 1 stopped (SIGSTOP: alive, never answering, which mpiexec cannot see): rank 0's
    watchdog (GPUCNN_WATCHDOG_S=2) ends the job, naming the silence, well within the bound."""
    proc = _start(tmp_path, *LONG, "--seed", seed, GPUCNN_WATCHDOG_S="2")
    try:
        _wait_for(tmp_path / "m.json", proc)
        os.kill(_rank_pid(proc.pid, 1), signal.SIGSTOP)
        t0 = time.monotonic()
        rc, out, err = _finish(proc)
    finally:
        kill_job(proc)  # whatever is left of the job (nothing, when it passes)
    assert rc != 0 and time.monotonic() - t0 < 20, err
    assert "rank 0 of 2 failed" in err and "no training step finished in 2 s" in err, err
