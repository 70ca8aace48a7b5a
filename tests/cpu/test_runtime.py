"""The CPU runtime (gpucnn/cpu): the worker pool and the recycled result pool."""
import threading

import numpy as np
import pytest

from gpucnn.backends.numpy_backend import NumpyBackend
from gpucnn.cpu import CpuRuntime, blas_threads, one_blas_thread, split
from gpucnn.ops.conv import reference as conv_ref
from gpucnn.ops.conv import conv_geometry


def test_split_covers_the_range_in_quanta():
    assert split(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert split(10, 3, quantum=4) == [(0, 4), (4, 8), (8, 10)]
    assert split(2, 8) == [(0, 1), (1, 2)]
    assert split(0, 2) == []


def test_pool_runs_ranges_in_order_and_forwards_worker_errors():
    rt = CpuRuntime(threads=2)

    def boom(a, b):
        if a > 0:
            raise RuntimeError("worker failed")
        return a

    with pytest.raises(RuntimeError, match="worker failed"):
        rt.run(boom, [(0, 1), (1, 2)])
    assert rt.run(lambda a, b: b - a, [(0, 3), (3, 4), (4, 9)]) == [3, 1, 5]  # still usable


def test_one_blas_thread_restores_the_setting():
    before = blas_threads()
    with one_blas_thread():
        with one_blas_thread():  # nested regions share one save/restore
            assert blas_threads() in (None, 1)
    assert blas_threads() == before


def test_backend_shared_by_two_threads(rng):
    """Two caller threads on one backend: one runs inline while the other holds the
    workers; both get correct results every time."""
    two = NumpyBackend(threads=2)
    x = rng.standard_normal((64, 3, 12, 12)).astype(np.float32)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    g = conv_geometry(x.shape, w.shape, padding=1)
    ref = conv_ref.conv2d(x.astype(np.float64), w.astype(np.float64), None, g, True)
    errors = []

    def loop():
        try:
            for _ in range(20):
                np.testing.assert_allclose(two.conv2d(x, w, None, padding=1, relu=True), ref,
                                           rtol=1e-4, atol=1e-4)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=loop) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_recycled_results_are_never_shared(rng):
    """Large results come from a pool recycled by reference count: a result (or any view of
    it) that is still referenced is never handed out again."""
    rt = CpuRuntime(threads=1)
    shape = (4, 8, 64, 64)  # 512 KiB of float32: pooled
    a = rt.output(shape, np.float32)
    a[...] = 1
    b = rt.output(shape, np.float32)
    assert not np.shares_memory(a, b)
    view = a[1:3]
    del a
    c = rt.output(shape, np.float32)  # `view` still holds the first block
    assert not np.shares_memory(c, view) and not np.shares_memory(c, b)
    assert (view == 1).all()
    mv = memoryview(c)
    del c, view
    d = rt.output(shape, np.float32)
    assert not np.shares_memory(d, np.asarray(mv)) and not np.shares_memory(d, b)
    first = d.__array_interface__["data"][0]
    del d
    e = rt.output(shape, np.float32)  # free again: the same block comes back
    assert e.__array_interface__["data"][0] == first


def test_column_cache_refuses_a_changed_input(rng):
    rt = CpuRuntime(threads=1)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    cols = np.ones(10, np.float32)
    assert rt.cache_put(x, "key", cols)
    assert rt.cache_take(x, "key") is cols
    assert rt.cache_take(x, "key") is None  # taken once
    rt.cache_put(x, "key", cols)
    x[0, 0, 0, 0] += 1  # changed in place: the cached columns are stale
    assert rt.cache_take(x, "key") is None
    rt.cache_put(x, "key", cols)
    assert rt.cache_take(x, "other geometry") is None


@pytest.mark.parametrize("spin_us", ["0", "500"])
def test_pool_hand_off_with_and_without_spinning(spin_us, monkeypatch):
    """Workers spin (spin.cpp) before they block, or never (0): either way every range runs
    once, in order, many hand-offs in a row (the counters are only hints)."""
    monkeypatch.setenv("GPUCNN_SPIN_US", spin_us)
    rt = CpuRuntime(threads=3)
    for i in range(300):
        got = rt.run(lambda a, b: (a, b, i), rt.ranges(9))
        assert got == [(0, 3, i), (3, 6, i), (6, 9, i)]


def test_pool_rejects_a_bad_spin_setting(monkeypatch):
    monkeypatch.setenv("GPUCNN_SPIN_US", "fast")
    with pytest.raises(ValueError, match="GPUCNN_SPIN_US='fast'.*microseconds"):
        CpuRuntime(threads=2).run(lambda a, b: a, [(0, 1), (1, 2)])


def test_a_collected_backend_leaves_no_worker_threads(rng):
    """A runtime's worker threads end with it: neither an idle worker's last job (whose
    closure holds the runtime) nor the workers themselves keep it alive."""
    import gc
    import threading
    import time

    def workers():
        return sum(t.name == "gpucnn-numpy" for t in threading.enumerate())
    gc.collect()
    before = workers()
    x = rng.standard_normal((16, 3, 16, 16)).astype(np.float32)
    for _ in range(5):
        B = NumpyBackend(threads=3)
        B.conv2d(x, rng.standard_normal((4, 3, 3, 3)).astype(np.float32), padding=1)
        B.relu_backward(x, x)
        del B
    gc.collect()
    deadline = time.monotonic() + 5
    while workers() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert workers() <= before  # (an earlier test's runtime may have gone meanwhile)
