"""Host batches onto a device backend, one batch ahead (gpucnn/backends/staging.py).

The cuda path runs against a fake CuPy that models what the GPU would do asynchronously: each
stream is a queue of operations (copies, event records, event waits, and the consumer's
"kernels" that read a batch), executed later in an order the test's scheduler picks, so a
missing wait shows as a read of the wrong bytes. Scheduling policies: lazy (nothing runs until
the host waits), copy stream first, compute stream first, and seeded random orders. A planted
fault in each of the three waits (the compute stream's wait for the copy, the copy stream's
wait for the compute work that read a slot, the host's wait before rewriting a pinned buffer)
makes the checks fail.

What this cannot prove without a GPU: that CuPy's ``ndarray.set(..., stream=)`` from
``alloc_pinned_memory`` buffers is really asynchronous and overlaps compute, that the calls
take these arguments in the CuPy version installed on a GPU machine, that the CUDA event and
stream semantics are the ones modelled here, and any speed-up. ``test_gpu_staged_batches_equal
_unstaged_ones`` (marked gpu) checks the results on a real GPU; the overlap is unmeasured.
"""
from __future__ import annotations

import contextlib
import types
from collections import deque
from types import SimpleNamespace

import numpy as np
import pytest

from gpucnn import train_data
from gpucnn.backends import get_backend
from gpucnn.backends.device import make_emu_backend
from gpucnn.backends.staging import SLOTS, CupyEngine, Staging
from gpucnn.data import load_dataset
from gpucnn.testing import write_cifar10
from gpucnn.train import TrainConfig, Trainer
from gpucnn.train_data import TrainBatches


# ---- a fake CuPy with asynchronous streams -----------------------------------------------------
class FakeDeviceArray:
    """A device buffer (or a view of one); ``set`` enqueues a copy that reads the host array
    when the stream runs it, not when it is called."""

    def __init__(self, cp, a):
        self.cp, self.a = cp, a

    shape = property(lambda self: self.a.shape)
    dtype = property(lambda self: self.a.dtype)
    ndim = property(lambda self: self.a.ndim)

    def __getitem__(self, key):
        return FakeDeviceArray(self.cp, self.a[key])

    def set(self, src, stream=None):
        cp = self.cp
        assert stream is not None, "a synchronous copy (set without a stream)"
        assert stream.non_blocking, "a copy on a blocking stream"
        assert any(np.shares_memory(src, p) for p in cp.pinned), "a copy from pageable memory"
        assert src.shape == self.a.shape and src.dtype == self.a.dtype
        cp.log.append(("copy", stream.name))
        stream.ops.append(("copy", self, src))


class FakeEvent:
    def __init__(self, cp, block=True, disable_timing=False):
        assert not block and disable_timing, "events for ordering only: no blocking sync, no timing"
        self.cp, self.recorded, self.done, self.stream = cp, 0, 0, None

    def record(self, stream):
        self.recorded += 1
        self.stream = stream
        self.cp.log.append(("record", stream.name))
        stream.ops.append(("record", self, self.recorded))

    def synchronize(self):
        self.cp.log.append(("host_wait", self.stream.name))
        self.cp.run_until(lambda: self.done >= self.recorded)


class FakeStream:
    def __init__(self, cp, name, non_blocking):
        self.cp, self.name, self.non_blocking = cp, name, non_blocking
        self.ops = deque()
        cp.streams.append(self)

    def wait_event(self, event):
        self.cp.log.append(("wait", self.name, event.stream.name))
        self.ops.append(("wait", event, event.recorded))

    def runnable(self):
        if not self.ops:
            return False
        op = self.ops[0]
        return op[0] != "wait" or op[1].done >= op[2]


def make_async_cupy(policy, seed=0):
    """``policy``: "copy-first", "compute-first" or "random" (which runnable stream runs when
    the GPU makes progress); progress happens only when the host waits or :func:`progress`."""
    cp = types.ModuleType("fakecupy_async")
    cp.ndarray = FakeDeviceArray
    cp.streams, cp.pinned, cp.log, cp.reads, cp.free = [], [], [], 0, []
    rng = np.random.default_rng(seed)
    cp.compute = FakeStream(cp, "compute", non_blocking=False)

    def step():
        ready = [s for s in cp.streams if s.runnable()]
        if not ready:
            return False
        if policy == "random":
            s = ready[rng.integers(len(ready))]
        else:
            first = "compute" if policy == "compute-first" else "copy"
            s = next((r for r in ready if r.name.startswith(first)), ready[0])
        op = s.ops.popleft()
        if op[0] == "copy":
            op[1].a[...] = op[2]  # the host buffer as it is now
        elif op[0] == "record":
            op[1].done = op[2]
        elif op[0] == "read":
            _, dev, want = op
            np.testing.assert_array_equal(dev.a.view(np.uint8), want.view(np.uint8),
                                          err_msg="a kernel read a batch that was not its own")
            cp.reads += 1
        return True

    def run_until(cond):
        while not cond():
            assert step(), "deadlock: the host waits for work no stream can run"

    def empty(shape, dtype=np.float32):
        # CuPy's pool: a block freed by work still queued on the current (compute) stream is
        # handed out again at once (cp.free: such blocks, put there by a test)
        for i, block in enumerate(cp.free):
            if block.shape == tuple(shape) and block.dtype == np.dtype(dtype):
                return FakeDeviceArray(cp, cp.free.pop(i))
        a = np.empty(shape, dtype)
        a.view(np.uint8)[...] = 0xA5  # poison: a read before the copy sees it
        return FakeDeviceArray(cp, a)

    def alloc_pinned_memory(nbytes):
        buf = bytearray(nbytes)
        cp.pinned.append(np.frombuffer(buf, np.uint8))
        return buf

    def stream(non_blocking=False):
        return FakeStream(cp, f"copy{len(cp.streams)}", non_blocking)

    cp.step, cp.run_until, cp.empty = step, run_until, empty
    cp.cuda = SimpleNamespace(alloc_pinned_memory=alloc_pinned_memory, Stream=stream,
                              Event=lambda **kw: FakeEvent(cp, **kw),
                              get_current_stream=lambda: cp.compute)
    return cp


def fake_cuda_backend(cp):
    return SimpleNamespace(kind="device", name="cuda", xp=cp, on_device=contextlib.nullcontext)


def host_batches(rng, sizes, shape=(3, 5, 4), dtype=np.float32):
    out = []
    for n in sizes:
        x = (rng.integers(0, 256, (n, *shape)).astype(dtype) if dtype == np.uint8
             else rng.standard_normal((n, *shape)).astype(dtype))
        out.append((x, rng.integers(0, 10, n)))  # int64 labels, as the datasets hold them
    return out


def reused_buffer_source(batches, closed=None):
    """The batches through one host buffer rewritten for each (as an input pipeline's shared
    slot: valid until the next is asked for)."""
    big = max(len(x) for x, _ in batches)
    buf = np.empty((big, *batches[0][0].shape[1:]), batches[0][0].dtype)
    try:
        for x, y in batches:
            buf[:len(x)] = x
            yield buf[:len(x)], y
    finally:
        if closed is not None:
            closed.append(True)


def consume(staging, cp, batches, rng, busy):
    """Stage ``batches``; each device batch gets a "kernel" reading it on the compute stream;
    between batches the GPU makes up to ``busy`` steps of progress (0: lazy)."""
    n = 0
    for (x, y), (hx, hy) in zip(staging.stage(reused_buffer_source(batches)), batches):
        assert x.dtype == hx.dtype and y.dtype == np.int32 and x.shape == hx.shape
        cp.compute.ops.append(("read", x, hx.copy()))
        cp.compute.ops.append(("read", y, hy.astype(np.int32)))
        for _ in range(int(rng.integers(0, busy + 1))):
            cp.step()
        n += 1
    assert n == len(batches)


POLICIES = [("copy-first", 0), ("compute-first", 0), ("random", 1), ("random", 3)]


@pytest.mark.parametrize("policy,busy", POLICIES)
def test_every_kernel_reads_its_own_batch_whatever_the_gpu_s_order(rng, policy, busy):
    """Two epochs through one Staging (the ring kept), a partial last batch, a larger image
    shape in the second (slots reallocated), uint8 images, a source that reuses its buffer."""
    for seed in range(6):
        cp = make_async_cupy(policy, seed)
        staging = Staging(fake_cuda_backend(cp))
        assert isinstance(staging.engine, CupyEngine)
        consume(staging, cp, host_batches(rng, [4, 4, 4, 4, 4, 3]), rng, busy)
        consume(staging, cp, host_batches(rng, [5, 5, 2], (3, 6, 4), np.uint8), rng, busy)
        cp.run_until(lambda: not any(s.ops for s in cp.streams))
        assert cp.reads == 2 * (6 + 3)
        copy_streams = {s.name for s in cp.streams} - {"compute"}
        assert len(copy_streams) == 1  # one second stream, made once
        # copies only on it; the compute stream waits for copies, the copy stream for the
        # compute stream; the host waits only for copies (before rewriting a pinned buffer),
        # except before freeing a slot to reallocate it
        assert {e[1] for e in cp.log if e[0] == "copy"} == copy_streams
        assert {(e[1], e[2]) for e in cp.log if e[0] == "wait"} == {
            ("compute", *copy_streams), (*copy_streams, "compute")}
        host_waits = [e[1] for e in cp.log if e[0] == "host_wait"]
        # (at most one per slot's images and labels: the second epoch's are larger)
        assert host_waits.count("compute") <= 2 * SLOTS and len(host_waits) > 0


def test_the_calls_for_four_batches(rng):
    """Which CuPy calls, on which stream, in which order (nothing runs on the fake GPU until
    the host waits): each batch's images and labels copied on the second stream and its event
    recorded there; the compute stream waits for it before the batch is handed out and records
    its own event when the next is asked for; the fourth batch reuses the first's slot after
    the host waited for the first copy (its pinned buffers) and the copy stream for the first
    step (its device buffers)."""
    cp = make_async_cupy("random")
    consume(Staging(fake_cuda_backend(cp)), cp, host_batches(rng, [4, 4, 4, 2]), rng, 0)
    copy = next(s.name for s in cp.streams if s.name != "compute")
    prepared = [("copy", copy), ("copy", copy), ("record", copy)]
    allocated = [("record", "compute"), ("wait", copy, "compute")]  # a slot's new buffers
    handed = [("wait", "compute", copy), ("record", "compute")]
    assert cp.log == ((allocated + prepared) * 2 + handed + allocated + prepared + handed
                      + [("host_wait", copy), ("wait", copy, "compute")] + prepared + handed
                      + handed)


@pytest.mark.parametrize("policy", ["copy-first", "random"])
def test_a_pool_block_still_read_by_queued_work_is_not_overwritten_early(rng, policy):
    """CuPy's pool hands a slot's new device buffer a block that a step still queued on the
    compute stream reads (a temporary it freed): the copy into it waits for that step."""
    for seed in range(4):
        cp = make_async_cupy(policy, seed)
        batches = host_batches(rng, [4, 4, 4])
        step_x = np.full((4, 3, 5, 4), 7.0, np.float32)  # what the queued step reads there
        step_y = np.full(4, 3, np.int32)
        block_x, block_y = step_x.copy(), step_y.copy()
        cp.compute.ops.append(("read", FakeDeviceArray(cp, block_x), step_x))
        cp.compute.ops.append(("read", FakeDeviceArray(cp, block_y), step_y))
        cp.free += [block_x, block_y]  # freed by the step before it ran
        consume(Staging(fake_cuda_backend(cp)), cp, batches, rng, 1)
        cp.run_until(lambda: not any(s.ops for s in cp.streams))
        assert not cp.free and cp.reads == 2 + 2 * 3  # the blocks were reused, read intact


def test_the_pinned_buffers_are_a_small_ring(rng):
    cp = make_async_cupy("random")
    staging = Staging(fake_cuda_backend(cp))
    consume(staging, cp, host_batches(rng, [4] * 20), rng, 2)
    assert len(cp.pinned) == 2 * SLOTS  # images and labels per slot, allocated once


class _Planted(CupyEngine):
    """A CupyEngine with one of its waits left out."""

    def __init__(self, cp, fault):
        super().__init__(cp)
        self.fault = fault

    def wait(self, stream, event):
        compute = stream.name == "compute"
        if not (self.fault == "compute-wait" and compute
                or self.fault == "copy-wait" and not compute):
            super().wait(stream, event)

    def host_wait(self, event):
        if self.fault != "host-wait":
            super().host_wait(event)


@pytest.mark.parametrize("fault,policy", [("compute-wait", "compute-first"),
                                          ("copy-wait", "copy-first"),
                                          ("host-wait", "compute-first")])
def test_a_missing_wait_is_caught(rng, fault, policy):
    cp = make_async_cupy(policy)
    staging = Staging(fake_cuda_backend(cp), engine=_Planted(cp, fault))
    with pytest.raises(AssertionError, match="not its own"):
        consume(staging, cp, host_batches(rng, [4] * 8), rng, 0)
        cp.run_until(lambda: not any(s.ops for s in cp.streams))


def test_closing_stops_the_source_and_the_ring_is_for_one_iteration_at_a_time(rng):
    cp = make_async_cupy("random")
    staging = Staging(fake_cuda_backend(cp))
    closed = []
    it = staging.stage(reused_buffer_source(host_batches(rng, [4] * 10), closed))
    next(it)
    with pytest.raises(RuntimeError, match="one staged iteration at a time"):
        next(staging.stage(iter([])))
    it.close()
    assert closed == [True]
    consume(staging, cp, host_batches(rng, [4] * 5), rng, 1)  # usable again after close
    cp.run_until(lambda: not any(s.ops for s in cp.streams))


# ---- emu, null, numpy ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def emu():
    return make_emu_backend()


def test_staged_batches_equal_asarray_on_emu(emu, rng):
    """Two iterations through one Staging (float32 images, then uint8 ones of another shape:
    the slots reallocated), each with a partial last batch."""
    B = emu
    staging = Staging(B)
    assert staging.how.startswith("staged one batch ahead (the emu device")
    for batches in (host_batches(rng, [6, 6, 6, 1]), host_batches(rng, [2, 2, 1], (1, 7, 7),
                                                                   np.uint8)):
        plain = [(B.to_numpy(x), B.to_numpy(y))
                 for x, y in Staging(B, staged=False).stage(iter(batches))]
        staged = [(B.to_numpy(x), B.to_numpy(y))
                  for x, y in staging.stage(reused_buffer_source(batches))]
        assert len(staged) == len(plain) == len(batches)
        for (x, y), (px, py), (hx, _) in zip(staged, plain, batches):
            if hx.dtype == np.uint8:  # staged as bytes; asarray widens them to int32
                px = px.astype(np.uint8)
            assert x.dtype == px.dtype == hx.dtype and y.dtype == py.dtype == np.int32
            np.testing.assert_array_equal(x.view(np.uint8), px.view(np.uint8))
            np.testing.assert_array_equal(y, py)


def test_numpy_passes_batches_through_without_copies(rng):
    B = get_backend("numpy")
    staging = Staging(B)
    assert staging.how is None and staging.engine is None
    (x, y), = host_batches(rng, [3])
    sx, sy = next(staging.stage(iter([(x, y)])))
    assert sx is x and sy.dtype == np.int32


# ---- the trainer's batches -------------------------------------------------------------------
def test_cifar_host_batches_on_fake_cuda_equal_the_numpy_path(tmp_path, rng, monkeypatch):
    """TrainBatches on a (fake) cuda backend: CIFAR-10 augmented on the host, staged; the
    batches equal the numpy backend's host batches bit for bit, and the start-up line says
    how they travel."""
    ds = load_dataset("cifar10", "train", data_dir=write_cifar10(tmp_path, rng, 3))
    cp = make_async_cupy("random", 5)
    monkeypatch.setattr(train_data, "free_device_bytes", lambda B: (1, "free on the GPU"))
    feed = TrainBatches(fake_cuda_backend(cp), ds, "off", augment=True)
    assert feed.line == ("batches augmented on the host, staged in pinned memory, copied on a "
                         "second stream one batch ahead: --device-data off")
    want = [(x.copy(), y.copy()) for x, y in
            TrainBatches(get_backend("numpy"), ds, "off", augment=True).batches(4, 7, 2)]
    n = 0
    for (x, y), (hx, hy) in zip(feed.batches(4, 7, 2), want):
        cp.compute.ops.append(("read", x, hx))
        cp.compute.ops.append(("read", y, hy))
        cp.step()
        n += 1
    cp.run_until(lambda: not any(s.ops for s in cp.streams))
    assert n == len(want) == 4 and cp.reads == 8  # 15 images: the last batch has 3


def test_a_rank_s_staged_parts_are_its_share_of_the_host_batches(tmp_path, rng, emu):
    """The data-parallel host path staged on emu: each rank's parts, concatenated, are the
    numpy backend's one-process batches."""
    ds = load_dataset("cifar10", "train", data_dir=write_cifar10(tmp_path, rng, 3))
    whole = list(TrainBatches(get_backend("numpy"), ds, "off", augment=True).batches(6, 1, 0))
    feed = TrainBatches(emu, ds, "off", augment=True)
    parts = [[(emu.to_numpy(x), emu.to_numpy(y)) for x, y in
              feed.batches(6, 1, 0, shard=(r, 2))] for r in range(2)]
    assert len(whole) == len(parts[0]) == len(parts[1]) == 3
    for b, (x, y) in enumerate(whole):
        np.testing.assert_array_equal(np.concatenate([p[b][0] for p in parts]), x)
        np.testing.assert_array_equal(np.concatenate([p[b][1] for p in parts]), y)


def test_cifar_training_on_emu_is_bit_identical_staged_or_not(tmp_path, rng, capsys):
    """LeNet-5 at 3x32x32 on CIFAR-10 augmented on the host (--device-data off), two epochs
    with a partial last batch: the staged path's losses and parameters equal the unstaged
    path's (a synchronous asarray per batch) exactly."""
    data_dir = write_cifar10(tmp_path, rng, 8)
    runs = []
    for staged in (True, False):
        cfg = TrainConfig(model="lenet5", dataset="cifar10", data_dir=str(data_dir),
                          backend="emu", epochs=2, batch_size=8, lr=0.05, momentum=0.9,
                          limit=20, test_limit=8, progress=False, device_data="off",
                          input=(3, 32, 32))
        t = Trainer(cfg)
        if not staged:
            t.feed.staging = Staging(t.backend, staged=False)
        runs.append((t, t.fit()))
    assert "staged one batch ahead" in capsys.readouterr().out
    (a, ma), (b, mb) = runs
    assert a.opt.steps == b.opt.steps == 6
    assert [e["train_loss"] for e in ma["epochs"]] == [e["train_loss"] for e in mb["epochs"]]
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        np.testing.assert_array_equal(a.backend.to_numpy(p.data), b.backend.to_numpy(q.data))


def test_closing_the_trainer_s_batches_closes_the_source(emu, rng):
    closed = []
    batches = host_batches(rng, [4] * 6)

    class Folder:  # an augmented image folder's interface, as TrainBatches uses it
        host_batches, pixels, zero_copy = True, None, False

        def __len__(self):
            return 24

        def batches(self, *args, **kw):
            return reused_buffer_source(batches, closed)

    feed = TrainBatches(emu, Folder(), augment=True)
    assert feed.line.startswith("images decoded and augmented on the host batch by batch, "
                                "staged one batch ahead")
    it = feed.batches(4, 0, 0)
    x, _ = next(it)
    np.testing.assert_array_equal(emu.to_numpy(x), batches[0][0])
    it.close()  # as a KeyboardInterrupt in the training loop does
    assert closed == [True] and feed.dataset.zero_copy


def test_the_wait_counted_is_the_trainer_s(emu, rng):
    """wait_s is the time spent inside next(): with staging, pulling (and copying) the batch
    ahead; every batch's preparation is counted once."""
    import time
    batches = host_batches(rng, [4] * 5)

    def slow():
        for xy in batches:
            time.sleep(0.02)
            yield xy

    class Folder:
        host_batches, pixels = True, None

        def __len__(self):
            return 20

        def batches(self, *args, **kw):
            return slow()

    feed = TrainBatches(emu, Folder(), augment=True)
    t0 = time.perf_counter()
    for _ in feed.batches(4, 0, 0):
        time.sleep(0.01)  # the step: not counted
    total = time.perf_counter() - t0
    assert 5 * 0.02 <= feed.wait_s <= total - 5 * 0.01 and feed.epoch_wait_s == feed.wait_s


# ---- on a GPU only -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cuda_backend():
    from harness import cuda_backend as cuda_or_verdict
    return cuda_or_verdict(lambda: get_backend("cuda"))


@pytest.mark.gpu
def test_gpu_staged_batches_equal_unstaged_ones(cuda_backend, rng):
    """Real pinned memory, a real second stream: staged batches (two epochs, a partial last
    batch, uint8 images, a reused source buffer) equal one synchronous asarray per batch. A
    kernel runs on each batch before the next is asked for, as a training step would."""
    B = cuda_backend
    staging = Staging(B)
    assert staging.how.startswith("staged in pinned memory")
    for batches in (host_batches(rng, [64, 64, 64, 64, 17], (3, 32, 32)),
                    host_batches(rng, [32, 32, 5], (3, 32, 32), np.uint8)):
        plain = [(B.to_numpy(x), B.to_numpy(y))
                 for x, y in Staging(B, staged=False).stage(iter(batches))]
        got = []
        for x, y in staging.stage(reused_buffer_source(batches)):
            if x.dtype == np.float32:
                B.relu(x)  # work on the compute stream that reads the batch
            got.append((B.to_numpy(x), B.to_numpy(y)))
        for (x, y), (px, py) in zip(got, plain):
            np.testing.assert_array_equal(x, px.astype(x.dtype))
            np.testing.assert_array_equal(y, py)
