"""The GPU-free and MPI-free parts of data-parallel training (issue 19), with stand-ins: the
NCCL communicator's path (unique id made on rank 0 and broadcast over MPI, one all-reduce of
the buffer on the backend's stream, device = local rank), gradient packing, the shards of a
global batch, the agreements of the ranks, the resume comparison across world sizes."""
import contextlib
import sys
import types

import numpy as np
import pytest

from harness import stable_seed

from gpucnn.backends import get_backend
from gpucnn.cli import main
from gpucnn.data.datasets import Dataset, dataset_info
from gpucnn.distributed import CollectiveError, World, make_communicator
from gpucnn.distributed.communicators import (GradientBuffer, MpiCommunicator,
                                              NcclCommunicator, select_device)
from gpucnn.distributed.faults import exit_status, fail_rank, is_collective
from gpucnn.distributed.world import DistributedUnavailable, default_threads
from gpucnn.models import build_model
from gpucnn.runmeta import compare_run
from gpucnn.train import TrainingInterrupted
from gpucnn.train_data import TrainBatches, shard_bounds


class FakeMPI:
    SUM, MAX, IN_PLACE, COMM_TYPE_SHARED = "sum", "max", "in_place", "shared"


class FakeComm:
    """One rank of a simulated world: ``shared`` is what rank 0 broadcast; Allreduce adds
    ``peers`` copies of the buffer (the other ranks holding the same values)."""

    def __init__(self, rank, size, shared, gathered=None):
        self.rank, self.size, self.shared, self.gathered = rank, size, shared, gathered
        self.aborted = None

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

    def bcast(self, obj, root=0):
        if self.rank == root:
            self.shared["bcast"] = obj
        return self.shared["bcast"]

    def allgather(self, obj):  # without ``gathered``: every rank holds what this one does
        return [obj if r == self.rank or self.gathered is None else self.gathered[r]
                for r in range(self.size)]

    def Allreduce(self, where, array, op):
        assert where == FakeMPI.IN_PLACE and op == FakeMPI.SUM
        array *= self.size

    def Abort(self, code):
        self.aborted = code


def world(rank=0, size=2, shared=None, gathered=None):
    return World(FakeComm(rank, size, {} if shared is None else shared, gathered), FakeMPI)


# ---- NCCL, without a GPU ------------------------------------------------------------------
class FakeDeviceArray:
    """A device array as the communicator uses it: .data.ptr, .size, .dtype, in-place *=."""

    def __init__(self, values):
        self.values = np.asarray(values)
        self.data = types.SimpleNamespace(ptr=self.values.ctypes.data)
        self.size, self.dtype = self.values.size, self.values.dtype

    def __imul__(self, w):
        self.values *= w
        return self


class FakeNccl:
    NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM = 7, 8, 0
    available = True
    ids_made = 0

    def __init__(self):
        self.comms = []

    def get_unique_id(self):
        FakeNccl.ids_made += 1
        return (1, 2, 3, FakeNccl.ids_made)

    def NcclCommunicator(self, size, uid, rank):
        comm = types.SimpleNamespace(args=(size, uid, rank), calls=[], aborted=False)
        comm.allReduce = lambda *a: comm.calls.append(("allReduce", *a))
        comm.bcast = lambda *a: comm.calls.append(("bcast", *a))
        comm.abort = lambda: setattr(comm, "aborted", True)
        self.comms.append(comm)
        return comm


class FakeCudaBackend:
    name = "cuda"

    def __init__(self):
        self.inside = 0
        stream = types.SimpleNamespace(ptr=0xABC)
        self.xp = types.SimpleNamespace(cuda=types.SimpleNamespace(
            get_current_stream=lambda: stream if self.inside else None))

    @contextlib.contextmanager
    def on_device(self):
        self.inside += 1
        try:
            yield
        finally:
            self.inside -= 1


def test_nccl_id_is_made_on_rank_0_and_broadcast_over_mpi():
    shared, nccl = {}, FakeNccl()
    before = FakeNccl.ids_made
    comms = [NcclCommunicator(world(r, 2, shared), FakeCudaBackend(), nccl) for r in (0, 1)]
    assert FakeNccl.ids_made == before + 1  # rank 1 made none
    (s0, id0, r0), (s1, id1, r1) = comms[0].comm.args, comms[1].comm.args
    assert (s0, r0, s1, r1) == (2, 0, 2, 1) and id0 == id1 == shared["bcast"]


def test_nccl_reduces_the_buffer_in_place_on_the_backend_stream():
    B, nccl = FakeCudaBackend(), FakeNccl()
    comm = NcclCommunicator(world(0, 2), B, nccl)
    buf = FakeDeviceArray(np.arange(6, dtype=np.float32))
    comm.allreduce_mean(buf, 0.5)
    np.testing.assert_array_equal(buf.values, np.arange(6, dtype=np.float32) * 0.5)
    assert comm.comm.calls == [("allReduce", buf.data.ptr, buf.data.ptr, 6, 7, 0, 0xABC)]
    comm.broadcast(FakeDeviceArray(np.zeros(3, np.float64)))
    assert comm.comm.calls[-1][0] == "bcast" and comm.comm.calls[-1][2:] == (3, 8, 0, 0xABC)
    assert comm.calls == 1
    with pytest.raises(ValueError, match="cannot reduce a float16 buffer"):
        comm.allreduce_mean(FakeDeviceArray(np.zeros(2, np.float16)), 1.0)
    comm.abort()
    assert comm.comm.aborted


def test_nccl_needs_the_cuda_backend_and_auto_picks_it_only_there():
    with pytest.raises(DistributedUnavailable, match="needs --backend cuda"):
        NcclCommunicator(world(), get_backend("numpy"), FakeNccl())
    assert make_communicator("auto", world(), FakeCudaBackend(), FakeNccl()).name == "nccl"
    assert make_communicator("auto", world(), get_backend("numpy")).name == "mpi"
    with pytest.raises(ValueError, match="must be one of auto, mpi, nccl"):
        make_communicator("gloo", world(), get_backend("numpy"))


def test_each_rank_takes_the_gpu_of_its_local_rank():
    w = world(3, 4)
    w.local_rank = 1
    env = {}
    assert select_device(w, env) == 1 and env == {"GPUCNN_CUDA_DEVICE": "1"}
    env = {"GPUCNN_CUDA_DEVICE": "0"}  # the user's choice stands
    assert select_device(w, env) == 0


# ---- one buffer per step ------------------------------------------------------------------
def test_gradients_are_reduced_as_the_flat_buffer_or_packed_once(request):
    B = get_backend("numpy")
    model = build_model("lenet5", backend=B, seed=stable_seed(request.node.nodeid) % 1000)
    params = model.parameters()
    rng = np.random.default_rng(stable_seed(request.node.nodeid))
    for p in params:
        p.grad = p.grad_view
        p.grad[...] = rng.standard_normal(p.grad.shape)
    grads = GradientBuffer(B, params)
    buf, packed = grads.gather()
    assert buf is params[0].flat.grad and not packed  # the model's own buffer: no copy
    comm = MpiCommunicator(world(0, 2), B)
    expect = [p.grad.copy() for p in params]
    comm.allreduce_mean(buf, 0.5)  # two identical ranks, each half: the mean is the gradient
    for p, e in zip(params, expect):
        np.testing.assert_array_equal(p.grad, e)
    params[1].grad = params[1].grad.copy()  # no longer in the buffer: packed, then unpacked
    buf, packed = grads.gather()
    assert packed and buf.size == sum(p.data.size for p in params) and grads.packs == 1
    buf *= 3.0
    grads.scatter(buf, packed)
    for p, e in zip(params, expect):
        np.testing.assert_array_equal(p.grad, e * 3)


# ---- the shards of a global batch ---------------------------------------------------------
@pytest.mark.parametrize("n,size", [(128, 2), (40, 2), (7, 3), (100, 4)])
def test_shards_cover_the_global_batch_in_order(n, size):
    parts = [shard_bounds(10, 10 + n, r, size) for r in range(size)]
    assert parts[0][0] == 10 and parts[-1][1] == 10 + n
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1


def test_ranks_parts_of_augmented_batches_are_the_one_process_batch(request):
    """CIFAR-10's host-augmented batches: the ranks' parts, cropped and flipped with their
    slices of the whole batch's draws, concatenate to the one-process batch bit for bit."""
    rng = np.random.default_rng(stable_seed(request.node.nodeid))
    pixels = rng.integers(0, 256, (50, 3, 32, 32), dtype=np.uint8)
    mean, std = (120.0, 110.0, 100.0), (60.0, 61.0, 62.0)
    images = ((pixels - np.array(mean).reshape(1, 3, 1, 1))
              / np.array(std).reshape(1, 3, 1, 1)).astype(np.float32)
    ds = Dataset(images, rng.integers(0, 10, 50).astype(np.int32), dataset_info("cifar10"),
                 "train", mean, std, pixels=pixels)
    feed = TrainBatches(get_backend("numpy"), ds, "auto", augment=True)
    assert feed.images is None  # the host-augmented path
    whole = list(feed.batches(16, 5, 1))
    for size in (2, 3):
        parts = [list(feed.batches(16, 5, 1, shard=(r, size))) for r in range(size)]
        for b, (x, y) in enumerate(whole):
            np.testing.assert_array_equal(np.concatenate([p[b][0] for p in parts]), x)
            np.testing.assert_array_equal(np.concatenate([p[b][1] for p in parts]), y)


# ---- agreements and faults ----------------------------------------------------------------
def test_a_disagreement_names_each_rank_and_value():
    w = world(0, 2, gathered={1: {"train_images": 320, "seed": 0}})
    with pytest.raises(CollectiveError, match=r"disagree .*train_images: rank 0 256, rank 1 "
                                              r"320\)") as e:
        w.check_same({"train_images": 256, "seed": 0})
    assert "seed" not in str(e.value)
    w.check_same({"train_images": 320, "seed": 0})  # agreement: nothing raised


def test_rank_0s_verdict_stops_every_rank():
    shared = {}

    def refuse():
        raise ValueError("--checkpoint ck.npz exists")

    with pytest.raises(ValueError) as e0:
        world(0, 2, shared).root_verdict(refuse)
    assert is_collective(e0.value)
    with pytest.raises(CollectiveError, match="rank 0: --checkpoint ck.npz exists"):
        world(1, 2, shared).root_verdict(lambda: pytest.fail("rank 1 must not run it"))
    assert world(1, 2, {"bcast": ("ok", 5)}).root_verdict(lambda: None) == 5


def test_a_failing_rank_names_itself_and_aborts_the_job(capsys):
    w = world(1, 2)
    comm = types.SimpleNamespace(aborted=False)
    comm.abort = lambda: setattr(comm, "aborted", True)
    fail_rank(w, ValueError("bad data"), comm, stream=sys.stderr)
    assert "rank 1 of 2 failed" in capsys.readouterr().err
    assert w.comm.aborted == 1 and comm.aborted
    assert exit_status(TrainingInterrupted(15)) == 143 and exit_status(ValueError()) == 2
    assert is_collective(TrainingInterrupted(15))
    assert not is_collective(TrainingInterrupted(15, immediate=True))
    assert not is_collective(ValueError("one rank's"))


def test_ranks_share_the_cores_of_their_machine():
    w = world(0, 4)
    w.local_size = 4
    assert default_threads(w, cores=16, usable=16) == 4
    assert default_threads(w, cores=16, usable=1) == 1  # bound to one core by mpiexec
    assert default_threads(w, cores=2, usable=2) == 1


def test_distributed_without_mpi4py_exits_2_naming_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    assert main(["train", "--distributed", "--backend", "numpy", "--no-progress"]) == 2
    assert "pip install '.[distributed]'" in capsys.readouterr().err
    assert main(["train", "--communicator", "mpi", "--backend", "numpy"]) == 2
    assert "--communicator applies to --distributed only" in capsys.readouterr().err


# ---- resume across world sizes: the global batch is compared ------------------------------
def _record(world_size, batch):
    return {"config": {"batch_size": batch, "seed": 0},
            "data_parallel": {"world_size": world_size, "global_batch": world_size * batch}}


def test_resume_compares_the_global_batch_across_world_sizes():
    assert compare_run(_record(2, 64), _record(1, 128))[0] == {}
    assert compare_run(_record(1, 128), _record(4, 32))[0] == {}
    diff = compare_run(_record(2, 64), _record(1, 64))[0]
    assert diff == {"data_parallel.global_batch": {"checkpoint": 128, "now": 64}}
    diff = compare_run(_record(2, 64), _record(2, 32))[0]  # same world: the batch, as before
    assert diff == {"config.batch_size": {"checkpoint": 64, "now": 32}}


# ---- dropout seeded by global sample position ---------------------------------------------
def test_an_index_offset_is_a_seed_shift(request):
    from gpucnn.ops.activation import dropout_hash, dropout_index_shift
    rng = np.random.default_rng(stable_seed(request.node.nodeid))
    for seed, offset in rng.integers(0, 2 ** 32, (20, 2)):
        i = rng.integers(0, 2 ** 32, 1000, dtype=np.uint64).astype(np.uint32)
        np.testing.assert_array_equal(
            dropout_hash((int(seed) + dropout_index_shift(offset)) % 2 ** 32, i),
            dropout_hash(seed, (i.astype(np.uint64) + int(offset)).astype(np.uint32)))


def _dropout_halves(backend, seed):
    """(masks of one layer over a batch of 6, masks of two layers over its halves with
    first_sample 0 and 3), over three calls (the counter advances)."""
    from gpucnn.nn import Dropout
    layers = [Dropout(0.5).bind(backend, np.random.default_rng(seed)) for _ in range(3)]
    layers[2].first_sample = 3
    x = backend.asarray(np.ones((6, 5, 7), np.float32))
    whole, parts = [], []
    for _ in range(3):
        whole.append(backend.to_numpy(layers[0].forward(x)))
        parts.append(np.concatenate([backend.to_numpy(layers[1].forward(x[:3])),
                                     backend.to_numpy(layers[2].forward(x[3:]))]))
    return whole, parts


def test_dropout_masks_of_a_rank_are_its_slice_of_the_global_batch(request):
    whole, parts = _dropout_halves(get_backend("numpy"), stable_seed(request.node.nodeid))
    for w, p in zip(whole, parts):
        np.testing.assert_array_equal(w, p)
    assert not np.array_equal(whole[0], whole[1])  # a new mask each call


def test_dropout_masks_of_a_rank_on_the_device(device_forward, request):
    whole, parts = _dropout_halves(device_forward, stable_seed(request.node.nodeid))
    host, _ = _dropout_halves(get_backend("numpy"), stable_seed(request.node.nodeid))
    for w, p, h in zip(whole, parts, host):
        np.testing.assert_array_equal(w, p)
        np.testing.assert_array_equal(w, h)


def test_a_rank_that_cannot_start_stops_all_with_its_reason():
    def fail():
        raise ValueError("dataset not found")

    with pytest.raises(ValueError, match="dataset not found") as e:
        world(1, 2, gathered={0: None}).all_or_none(fail)
    assert is_collective(e.value)  # rank 1 ends quietly with its status; rank 0 says why
    with pytest.raises(CollectiveError, match="rank 1 could not start: ValueError: dataset "
                                              "not found"):
        world(0, 2, gathered={1: "ValueError: dataset not found"}).all_or_none(lambda: 1)
    assert world(0, 2, gathered={1: None}).all_or_none(lambda: 7) == 7


def test_the_communicator_is_chosen_without_collectives():
    from gpucnn.distributed.communicators import communicator_name
    numpy = get_backend("numpy")
    assert communicator_name("auto", numpy) == "mpi"
    assert communicator_name("auto", FakeCudaBackend(), FakeNccl()) == "nccl"
    with pytest.raises(DistributedUnavailable, match="needs --backend cuda"):
        communicator_name("nccl", numpy)


# ---- the watchdog -------------------------------------------------------------------------
def test_the_watchdog_fires_only_after_a_step_and_a_silence():
    from gpucnn.distributed.watchdog import Watchdog, watchdog_seconds
    fired = []
    with Watchdog(0.15, lambda: fired.append(1), poll=0.01) as w:
        import time
        time.sleep(0.3)
        assert not fired  # no step finished yet: start-up is not timed
        for _ in range(10):
            w.beat()
            time.sleep(0.03)
        assert not fired
        time.sleep(0.4)
    assert fired == [1] and w.fired
    assert watchdog_seconds({}) == 600 and watchdog_seconds({"GPUCNN_WATCHDOG_S": "0"}) == 0
    with pytest.raises(ValueError, match="GPUCNN_WATCHDOG_S='soon'"):
        watchdog_seconds({"GPUCNN_WATCHDOG_S": "soon"})


# ---- on the device backend (emu here; the GPU in bench/gpu_validate.sh's device tests) ----
def test_a_world_of_one_through_the_device_communicator_trains_as_one_process(device_forward):
    """LeNet-5 steps of a DistributedTrainer in a world of one, reducing through the
    communicator auto picks (nccl on a GPU, the NCCL wheel being in the cuda extras; mpi on
    emu), are bit-identical to a plain Trainer's."""
    from gpucnn.distributed.trainer import DistributedTrainer
    from gpucnn.train import TrainConfig, Trainer

    def cfg():
        return TrainConfig(backend=device_forward.name, limit=48, test_limit=16, batch_size=16,
                           progress=False, device_data="off")

    plain = Trainer(cfg())
    plain.fit()
    dist = DistributedTrainer(cfg(), world(0, 1))
    assert dist.comm.name == ("nccl" if device_forward.name == "cuda" else "mpi")
    dist.fit()
    assert dist.comm.calls == 3 and dist.metrics()["world_size"] == 1
    for (name, a), (_, b) in zip(plain.model.named_parameters(),
                                 dist.model.named_parameters()):
        np.testing.assert_array_equal(device_forward.to_numpy(a.data),
                                      device_forward.to_numpy(b.data), err_msg=name)


def test_a_last_global_batch_with_fewer_images_than_ranks_is_refused():
    """129 images in global batches of 2 x 64: the last would hold 1 image for 2 ranks."""
    from gpucnn.distributed.trainer import DistributedTrainer
    from gpucnn.train import TrainConfig
    cfg = TrainConfig(backend="numpy", limit=129, test_limit=16, batch_size=64,
                      progress=False)
    with pytest.raises(CollectiveError, match="last global batch of each epoch would hold 1 "
                                              "images for 2 ranks"):
        DistributedTrainer(cfg, world(0, 2))


class _Reads(list):
    """A folder's list of paths that records which images are read (decoded)."""
    read = None

    def __getitem__(self, i):
        if self.read is not None:
            self.read.append(i)
        return list.__getitem__(self, i)


def _rank_batches(feed, seed, epoch, start, shard):
    # a batch from the workers is a view of their slot, valid until the next: copied
    return [(x.copy(), y.copy()) for x, y in feed.batches(6, seed, epoch, start, shard)]


@pytest.mark.parametrize("workers", [0, 1])
def test_ranks_parts_of_an_augmented_folder_are_the_one_process_batch(tmp_path, request,
                                                                      workers):
    """An augmented image folder of 14 training images in global batches of 6 (the last of
    2): each of 2 ranks decodes and augments only its part of each batch (threads: the files
    read are counted; 1 worker process: slots of 3), and the parts concatenate to the
    one-process batch bit for bit, from the start of an epoch and from a resumed batch."""
    from PIL import Image
    from gpucnn.data.folder import load_folder
    rng = np.random.default_rng(stable_seed(request.node.nodeid))
    for split, n in (("train", 7), ("val", 2)):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                h, w = rng.integers(14, 30, 2)
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                    tmp_path / split / c / f"{i}.png")
    data = load_folder(tmp_path, input_size=(12, 12), augment="random-resized-crop",
                       workers=workers, threads=2)
    ds = data.train
    assert len(ds) == 14
    ds.paths = _Reads(ds.paths)
    feed = TrainBatches(get_backend("numpy"), ds, "auto", augment=True)
    seed = int(rng.integers(1000))
    try:
        for epoch, start in ((0, 0), (1, 0), (1, 1)):
            whole = _rank_batches(feed, seed, epoch, start, None)
            assert [len(y) for _, y in whole] == [6, 6, 2][start:]
            parts, read = [], []
            for r in range(2):
                ds.paths.read = []
                parts.append(_rank_batches(feed, seed, epoch, start, (r, 2)))
                read.append(ds.paths.read)
                ds.paths.read = None
                assert [len(y) for _, y in parts[r]] == [3, 3, 1][start:]
            for b, (x, y) in enumerate(whole):
                np.testing.assert_array_equal(np.concatenate([p[b][0] for p in parts]), x)
                np.testing.assert_array_equal(np.concatenate([p[b][1] for p in parts]), y)
            if not workers:  # each rank read only its own images, each once
                assert sorted(read[0] + read[1]) == sorted(set(read[0]) | set(read[1]))
                assert len(read[0]) + len(read[1]) == sum(len(y) for _, y in whole)
            else:
                assert ds.pipeline.batch == 3
    finally:
        if ds.pipeline is not None:
            ds.pipeline.close()
