"""The ``cuda`` backend wrapper (gpucnn.backends.cuda).

Without a GPU (this machine, CI): asking for ``cuda`` raises BackendUnavailable naming the
cause (CuPy missing -> which wheel; no driver/device; probe failure), ``auto`` falls back to
numpy with a reason, and CudaModule / make_cuda_backend / count_host_transfers are exercised
against a fake CuPy module. Tests marked ``gpu`` need a real GPU and skip, with the reason
printed (``-ra``), elsewhere; ``bench/gpu_validate.sh`` runs them on a GPU machine.
"""
from __future__ import annotations

import sys
import threading
import types

import numpy as np
import pytest

from gpucnn.backends import BackendUnavailable, auto_reason, get_backend
from gpucnn.backends import cuda as cuda_mod
from gpucnn.backends import cuda_probe
from gpucnn.nn import ReLU
from gpucnn.toolchain import COMPILE_OPTIONS, kernel_decls, kernel_sources
from gpucnn.toolchain.compilers import nvrtc_options

KNOWN_CAUSES = ("CuPy is not installed", "CuPy is installed but failed to import",
                "no usable CUDA device", "the probe kernel", "the gpucnn kernels failed to compile",
                "the gpucnn kernel sources are missing")


def _cupy_importable():
    try:
        import cupy  # noqa: F401
        return True
    except Exception:  # noqa: BLE001
        return False


# ---- the real environment --------------------------------------------------------------------

def test_cuda_backend_available_or_says_why():
    try:
        backend = cuda_mod.make_cuda_backend()
    except BackendUnavailable as exc:
        msg = str(exc)
        print(f"cuda backend unavailable: {msg}")
        if not _cupy_importable():
            assert msg.startswith("CuPy is not installed") or msg.startswith(
                "CuPy is installed but failed to import"), msg
            if msg.startswith("CuPy is not installed"):
                assert "cupy-cuda12x" in msg or "cupy-cuda13x" in msg, msg
        elif cuda_mod.driver_cuda_version() is None:
            assert msg.startswith("no usable CUDA device"), msg
            assert "no NVIDIA driver" in msg and "libcuda" in msg, msg
        else:
            assert msg.startswith(KNOWN_CAUSES), msg
        # get_backend("cuda") says the same, and does not cache the failure
        for _ in range(2):
            with pytest.raises(BackendUnavailable) as again:
                get_backend("cuda")
            assert str(again.value).split(":")[0] == msg.split(":")[0]
    else:
        assert backend.name == "cuda" and backend.xp.__name__ == "cupy"
        assert backend.device_name and backend.max_blocks >= 1


def test_auto_falls_back_to_numpy_with_reason():
    backend = get_backend("auto")
    reason = auto_reason()
    print(f"auto: {backend.name}: {reason}")
    if backend.name == "cuda":
        assert reason.startswith("cuda: ")
    else:
        assert backend.name == "numpy"
        prefix = "numpy, because the cuda backend is unavailable: "
        assert reason.startswith(prefix), reason
        assert reason[len(prefix):].startswith(KNOWN_CAUSES), reason


def test_missing_cupy_names_the_wheel(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)      # makes `import cupy` fail
    with pytest.raises(BackendUnavailable) as exc:
        cuda_mod.make_cuda_backend()
    msg = str(exc.value)
    assert msg.startswith("CuPy is not installed"), msg
    assert "cupy-cuda12x" in msg or "cupy-cuda13x" in msg, msg


def test_missing_cupy_picks_wheel_from_driver(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    for drv, wheel in (((12, 4), "cupy-cuda12x"), ((13, 0), "cupy-cuda13x")):
        monkeypatch.setattr(cuda_probe, "driver_cuda_version", lambda d=drv: d)
        with pytest.raises(BackendUnavailable) as exc:
            cuda_mod.make_cuda_backend()
        assert f"pip install {wheel}" in str(exc.value)
        assert f"CUDA {drv[0]}.{drv[1]}" in str(exc.value)


def test_compile_options_are_the_gated_ones():
    assert cuda_mod.COMPILE_OPTIONS is COMPILE_OPTIONS
    gate = nvrtc_options("sm_80")
    assert all(o in gate for o in cuda_mod.COMPILE_OPTIONS)
    assert "-std=c++17" in cuda_mod.COMPILE_OPTIONS
    assert not any("fast_math" in o or "fast-math" in o for o in cuda_mod.COMPILE_OPTIONS)


# ---- a fake CuPy: the wrapper's logic without a GPU --------------------------------------------

class FakeRuntimeError(RuntimeError):
    pass


class FakeArray:
    """Enough of cupy.ndarray for the wrapper and the transfer counter."""

    def __init__(self, a):
        self._a = np.array(a, order="C")

    dtype = property(lambda self: self._a.dtype)
    shape = property(lambda self: self._a.shape)
    flags = property(lambda self: self._a.flags)
    nbytes = property(lambda self: self._a.nbytes)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)

    def fill(self, value):
        self._a.fill(value)

    def get(self):
        return self._a.copy()

    def item(self):
        return self._a.item()

    def tolist(self):
        return self._a.tolist()

    def set(self, arr):
        self._a[...] = arr

    def __float__(self):
        return float(self._a)


class FakeRawKernel:
    cp = None  # the fake CuPy module, set by make_fake_cupy (for its event log)

    def __init__(self, code, name, options=()):
        self.code, self.name, self.options = code, name, tuple(options)
        self.calls = []
        self.attributes = {"num_regs": 16, "max_threads_per_block": 1024}

    def __call__(self, grid, block, args, shared_mem=0):
        self.calls.append((grid, block, args, shared_mem))
        capture = getattr(self.cp, "capturing", None) if self.cp is not None else None
        if capture is not None:  # a stream capture records the launch; the graph replays it
            capture.append(self.name)
            return
        if self.cp is not None:
            self.cp.events.append(("launch " + self.name, self.cp.current_device()))
        if self.name == "gpucnn_probe":
            y, a, n = args
            y._a[:int(n)] = a * np.arange(int(n), dtype=np.float32) + 1.0


class FakeRawModule:
    def __init__(self, code, options=()):
        self.code, self.options = code, tuple(options)
        self.loaded = {}

    def get_function(self, name):
        if f" {name}(" not in self.code:
            raise RuntimeError(f"no function {name}")
        return self.loaded.setdefault(name, FakeRawKernel(self.code, name, self.options))


def make_fake_cupy(device_count=1, probe="ok"):
    cp = types.ModuleType("fakecupy")
    cp.ndarray = FakeArray

    def get_device_count():
        if isinstance(device_count, Exception):
            raise device_count
        return device_count

    current = threading.local()  # CuPy's current device is per thread

    class Device:
        def __init__(self, i=None):
            self.id = getattr(current, "id", 0) if i is None else i
            self._stack = []

        def use(self):
            current.id = self.id

        def synchronize(self):
            cp.events.append(("sync", self.id))

        def __enter__(self):
            self._stack.append(getattr(current, "id", 0))
            current.id = self.id
            return self

        def __exit__(self, *exc):
            current.id = self._stack.pop()

    cp.events = []  # (what, device) of allocations, launches and synchronises
    cp.current_device = lambda: getattr(current, "id", 0)
    cp.capturing = None  # the launches of a stream capture under way

    class Graph:
        def __init__(self, names):
            self.names = names

        def launch(self, stream=None):
            cp.events += [("graph " + n, cp.current_device()) for n in self.names]

    class Stream:  # CuPy's stream capture, as far as the cuda backend uses it
        def __init__(self, non_blocking=False):
            self.non_blocking = non_blocking

        def __enter__(self):
            cp.events.append(("stream enter", cp.current_device()))
            return self

        def __exit__(self, *exc):
            cp.events.append(("stream exit", cp.current_device()))

        def begin_capture(self, mode=None):
            assert self.non_blocking, "capture on the legacy default stream is refused"
            cp.events.append(("begin capture", mode))
            cp.capturing = []

        def end_capture(self):
            names, cp.capturing = cp.capturing, None
            return Graph(names)

    class MemoryPool:  # CuPy's default allocator and its stream-ordered one
        def malloc(self, nbytes):
            raise AssertionError("the fake allocates through cp.empty only")

    class MemoryAsyncPool(MemoryPool):
        pass

    cp.allocator = MemoryPool().malloc
    cp.cuda = types.SimpleNamespace(
        get_allocator=lambda: cp.allocator, MemoryPool=MemoryPool,
        MemoryAsyncPool=MemoryAsyncPool,
        runtime=types.SimpleNamespace(
            CUDARuntimeError=FakeRuntimeError, getDeviceCount=get_device_count,
            runtimeGetVersion=lambda: 12040, streamCaptureModeRelaxed=2,
            getDeviceProperties=lambda i: {"name": b"Fake GPU", "major": 9, "minor": 0,
                                           "multiProcessorCount": 132,
                                           "totalGlobalMem": 80 * 2**30}),
        Device=Device, Stream=Stream)
    cp.RawModule = FakeRawModule

    def raw_kernel(code, name, options=()):
        if probe == "compile-error":
            raise RuntimeError("nvrtc: error: fake compile failure")
        k = FakeRawKernel(code, name, options)
        if probe == "wrong":
            k.__class__ = type("WrongKernel", (FakeRawKernel,),
                               {"__call__": lambda self, g, b, a, shared_mem=0: None})
        return k

    cp.RawKernel = raw_kernel
    FakeRawKernel.cp = cp

    def empty(shape, dtype=np.float32):
        cp.events.append(("alloc", cp.current_device()))
        return FakeArray(np.empty(shape, dtype=dtype))

    cp.empty = empty
    cp.ascontiguousarray = lambda a: a
    cp.matmul = lambda a, b: FakeArray(a.get() @ b.get())
    cp.full = lambda n, v, dtype=np.float32: FakeArray(np.full(n, v, dtype=dtype))
    cp.asnumpy = lambda a: a.get()
    cp.asarray = lambda a, dtype=None: a if isinstance(a, FakeArray) else FakeArray(
        np.asarray(a, dtype=dtype))
    cp.array = lambda a, dtype=None: FakeArray(np.array(a.get() if isinstance(a, FakeArray)
                                                        else a, dtype=dtype))
    return cp


def test_no_device_message():
    cp = make_fake_cupy(device_count=FakeRuntimeError(
        "cudaErrorNoDevice: no CUDA-capable device is detected"))
    with pytest.raises(BackendUnavailable) as exc:
        cuda_mod.make_cuda_backend(cupy=cp)
    assert str(exc.value).startswith("no usable CUDA device: cudaErrorNoDevice")
    with pytest.raises(BackendUnavailable, match="reports 0 GPUs"):
        cuda_mod.make_cuda_backend(cupy=make_fake_cupy(device_count=0))


def test_probe_failures_make_backend_unavailable():
    with pytest.raises(BackendUnavailable, match="probe kernel failed to compile or run.*"
                                                 "fake compile failure"):
        cuda_mod.make_cuda_backend(cupy=make_fake_cupy(probe="compile-error"))
    with pytest.raises(BackendUnavailable, match="probe kernel ran but gave wrong results"):
        cuda_mod.make_cuda_backend(cupy=make_fake_cupy(probe="wrong"))


def test_backend_on_fake_gpu(monkeypatch):
    monkeypatch.setenv("GPUCNN_CUBLAS", "1")
    monkeypatch.delenv("GPUCNN_CUDA_MAX_BLOCKS", raising=False)
    cp = make_fake_cupy()
    b = cuda_mod.make_cuda_backend(cupy=cp)
    assert b.name == "cuda" and b.xp is cp
    assert b.use_cublas is True and b.compute_capability == (9, 0)
    assert b.max_blocks == min(65535, 32 * 132)
    assert "Fake GPU" in b.describe() and "sm_90" in b.describe()
    # eager: every kernel of every source was loaded once
    names = b.module.kernel_names()
    assert names and all(n in b.module._kernels for n in names)
    assert cuda_mod.get_cuda_module(cupy=cp) is b.module          # once per process
    b2 = cuda_mod.make_cuda_backend(cupy=cp, use_cublas=False)
    assert b2.use_cublas is False and b2.module is b.module


def test_backend_works_on_its_own_device_from_any_thread():
    """Allocations, launches and synchronise run on the backend's GPU even when the calling
    thread's current device is another one (CuPy's current device is per thread)."""
    cp = make_fake_cupy(device_count=2)
    b = cuda_mod.make_cuda_backend(cupy=cp, device=1, use_cublas=False)
    assert b.device_id == 1 and cp.current_device() == 0  # the caller's device is untouched
    assert b.module is cuda_mod.get_cuda_module(cupy=cp, device_id=1)
    assert b.module is not cuda_mod.get_cuda_module(cupy=cp, device_id=0)  # one per GPU
    seen = []

    def work():
        cp.cuda.Device(0).use()  # this thread works on GPU 0 otherwise
        cp.events.clear()
        x = b.empty((4, 8))
        b.relu(x)
        layer = ReLU().bind(b)  # a layer runs its kept plan, not B.relu: pinned all the same
        layer(x)
        layer(x)
        b.synchronize()
        seen.extend(cp.events)
        seen.append(("after", cp.current_device()))

    errors = []

    def run():
        try:
            work()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert not errors, errors
    assert seen.count(("launch relu_forward", 1)) == 3 and ("sync", 1) in seen
    assert all(dev == 1 for what, dev in seen if what != "after"), seen
    assert seen[-1] == ("after", 0)


def test_gpu_present_but_unusable_says_what_to_install(monkeypatch):
    """CuPy imports, a GPU is visible, the probe fails for a missing library: the error (and
    auto's warning) names the library and the pip command."""
    cp = make_fake_cupy(probe="compile-error")

    def missing(code, name, options=()):
        raise RuntimeError("CuPy failed to load libnvrtc.so.12: OSError: libnvrtc.so.12: "
                           "cannot open shared object file: No such file or directory")

    cp.RawKernel = missing
    with pytest.raises(cuda_mod.GpuUnusable) as exc:
        cuda_mod.make_cuda_backend(cupy=cp)
    msg = str(exc.value)
    assert "a GPU is present (Fake GPU, sm_90, device 0) but gpucnn cannot use it" in msg
    assert "libnvrtc.so.12 is missing" in msg and "[ctk]>=14'" in msg

    import gpucnn.backends as backends
    from gpucnn.backends.reference import ReferenceBackend

    def make(name, precision):  # the cuda backend fails as above; the CPU one stands in
        if name == "cuda":
            raise cuda_mod.GpuUnusable(msg)
        return ReferenceBackend()

    monkeypatch.setattr(backends, "_cache", {})
    monkeypatch.setattr(backends, "_make", make)
    with pytest.warns(backends.GpuUnusableWarning, match="libnvrtc.so.12 is missing"):
        chosen = backends.get_backend("auto")
    assert isinstance(chosen, ReferenceBackend) and "libnvrtc.so.12" in backends.auto_reason()


def test_cublas_is_probed_when_asked_for():
    cp = make_fake_cupy()
    cp.matmul = lambda a, b: (_ for _ in ()).throw(
        RuntimeError("libcublasLt.so.12: cannot open shared object file"))
    with pytest.raises(cuda_mod.GpuUnusable, match="GPUCNN_CUBLAS=1 but cuBLAS does not work.*"
                                                   "libcublasLt.so.12 is missing"):
        cuda_mod.make_cuda_backend(cupy=cp, use_cublas=True)


def _valid_args(params):
    args = []
    for p in params:
        if p.is_pointer:
            args.append(FakeArray(np.ones(8, dtype=p.dtype or np.float32)))
        else:
            args.append(p.dtype.type(1))
    return args


def _kernel_with_both(mod):
    """A kernel of ``mod`` taking both a pointer and a scalar argument."""
    return mod.get_function(next(
        n for n in mod.kernel_names()
        if {p.is_pointer for p in mod.get_function(n).params} == {True, False}))


def _wrong_launches(k):
    """Launches of ``k`` a GPU would not take: ``(grid, block, args, error, match)``."""
    args = _valid_args(k.params)
    ptr = next(i for i, p in enumerate(k.params) if p.is_pointer)
    sc = next(i for i, p in enumerate(k.params) if not p.is_pointer)
    host, pyint = list(args), list(args)
    host[ptr] = np.ones(8, dtype=k.params[ptr].dtype or np.float32)   # not a device array
    pyint[sc] = 1                                                     # a Python int
    return [(1, (64, 32), args, ValueError, "1024 threads"),
            ((1, 70000), 32, args, ValueError, "gridy"),
            (1, 32, args[:-1], TypeError, "expected"),                 # wrong count
            (1, 32, host, TypeError, "CuPy arrays"),
            (1, 32, pyint, TypeError, "expected np")]


def test_cuda_module_checks_launches():
    cp = make_fake_cupy()
    mod = cuda_mod.CudaModule(kernel_sources(), cupy=cp)
    assert "-std=c++17" in mod.options
    assert any(o.startswith("-I") for o in mod.options)
    name = mod.kernel_names()[0]
    k = mod.get_function(name)
    assert mod.get_function(name) is k
    args = _valid_args(k.params)
    k(3, 128, args)
    grid, block, passed, smem = k.raw.calls[-1]
    assert grid == (3, 1, 1) and block == (128, 1, 1) and smem == 0
    assert len(passed) == len(args)
    k((2, 2), (16, 16), tuple(args), shared_mem=64)
    assert k.raw.calls[-1][:2] == ((2, 2, 1), (16, 16, 1)) and k.raw.calls[-1][3] == 64
    with pytest.raises(KeyError, match="no kernel named"):
        mod.get_function("no_such_kernel")


@pytest.mark.parametrize("entry", ["__call__", "check"])
def test_cuda_kernel_refuses_wrong_launches(entry):
    k = _kernel_with_both(cuda_mod.CudaModule(kernel_sources(), cupy=make_fake_cupy()))
    for grid, block, args, error, match in _wrong_launches(k):
        with pytest.raises(error, match=match):
            getattr(k, entry)(grid, block, args)
    assert k.raw.calls == []                                   # nothing reached the GPU


def test_cuda_kernel_check_then_launch():
    """check normalises and launches nothing; launch passes its arguments on unchecked, on
    the current device; a call checks, then launches on the module's own GPU."""
    cp = make_fake_cupy(device_count=2)
    k = _kernel_with_both(cuda_mod.CudaModule(kernel_sources(), cupy=cp, device_id=1))
    args = _valid_args(k.params)
    checked = k.check(3, [128], args, shared_mem=np.int64(16))
    assert checked == ((3, 1, 1), (128, 1, 1), tuple(args), 16) and k.raw.calls == []
    k.launch(*checked)
    assert k.raw.calls[-1] == checked and cp.events[-1] == (f"launch {k.name}", 0)
    for grid, block, wrong, _error, _match in _wrong_launches(k):
        k.launch(grid, block, wrong)                           # launch checks nothing
        assert k.raw.calls[-1] == (grid, block, wrong, 0)
    k(3, 128, args)
    assert k.raw.calls[-1] == checked[:3] + (0,) and cp.events[-1] == (f"launch {k.name}", 1)
    assert cp.current_device() == 0


def test_cuda_module_rejects_duplicate_kernels(tmp_path):
    for n in ("a.cu", "b.cu"):
        (tmp_path / n).write_text('extern "C" __global__ void same(float* x) { }\n')
    with pytest.raises(ValueError, match="defined in both"):
        cuda_mod.CudaModule(sorted(tmp_path.glob("*.cu")), cupy=make_fake_cupy())


def test_header_hash_changes_options(tmp_path):
    (tmp_path / "k.cu").write_text('extern "C" __global__ void k(float* x) { }\n')
    plain = cuda_mod.CudaModule([tmp_path / "k.cu"], cupy=make_fake_cupy()).options
    (tmp_path / "common.cuh").write_text("#define ONE 1\n")
    with_header = cuda_mod.CudaModule([tmp_path / "k.cu"], cupy=make_fake_cupy()).options
    assert not any("GPUCNN_HEADERS_HASH" in o for o in plain)
    assert any(o.startswith("-DGPUCNN_HEADERS_HASH=") for o in with_header)


def test_count_host_transfers_on_fake_cupy():
    cp = make_fake_cupy()
    dev = FakeArray(np.arange(6, dtype=np.float32))
    scalar = FakeArray(np.float32(2.5))
    original_get = FakeArray.get
    with cuda_mod.count_host_transfers(cupy=cp) as t:
        cp.asnumpy(dev)                          # asnumpy calls .get(): counted once
        dev.get()
        float(scalar)
        cp.asarray(np.zeros(4, np.float32))      # host -> device
        cp.asarray(dev)                          # already on the device: not a transfer
        dev.set(np.ones(6, np.float32))
        with cuda_mod.count_host_transfers(cupy=cp) as inner:
            dev.tolist()
    assert (t.to_host, t.to_device) == (4, 2), t.summary()
    assert t.bytes_to_host == 24 + 24 + 4 + 24 and t.bytes_to_device == 16 + 24
    assert (inner.to_host, inner.to_device) == (1, 0)
    assert any("test_cuda_backend.py" in e[4] for e in t.events), t.events
    assert FakeArray.get is original_get                        # hooks removed
    cp.asnumpy(dev)
    assert t.to_host == 4


def test_count_host_transfers_restores_real_cupy():
    cupy = pytest.importorskip("cupy", reason="CuPy not installed: nothing to patch")
    before = dict(vars(cupy.ndarray))
    asnumpy = cupy.asnumpy
    with cuda_mod.count_host_transfers() as t:
        assert getattr(cupy.ndarray.get, "_gpucnn_hook", False)
        assert getattr(cupy.asnumpy, "_gpucnn_hook", False)
    assert not t.unpatched
    assert dict(vars(cupy.ndarray)) == before and cupy.asnumpy is asnumpy


# ---- on a GPU only -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cuda_backend():
    # No GPU or driver: skip; a GPU gpucnn cannot use (GpuUnusable): fail (the rule of
    # tests/harness.py, checked by test_harness.py).
    from harness import cuda_backend as cuda_or_verdict
    return cuda_or_verdict(lambda: get_backend("cuda"))


@pytest.mark.gpu
def test_gpu_kernels_load_and_fit_their_blocks(cuda_backend):
    mod = cuda_backend.module
    attrs = mod.attributes()
    for name, d in kernel_decls().items():
        if name not in attrs:
            continue
        a = attrs[name]
        print(f"{name}: {a}")
        assert a["max_threads_per_block"] >= d.block, (
            f"{name}: the driver allows {a['max_threads_per_block']} threads per block "
            f"with {a['num_regs']} registers; the declared launch uses {d.block}")


@pytest.mark.gpu
def test_gpu_small_ops_match_numpy(cuda_backend, numpy_backend, rng):
    from gpucnn.testing import assert_close, randn
    B, R = cuda_backend, numpy_backend
    x, w, b = randn(rng, 2, 3, 9, 9), randn(rng, 4, 3, 3, 3), randn(rng, 4)
    y = B.conv2d(B.asarray(x), B.asarray(w), B.asarray(b), padding=1, relu=True)
    ref = R.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64),
                   padding=1, relu=True)
    assert_close(B.to_numpy(y), ref, 1e-5, "conv2d+relu on cuda")
    xl, wl, bl = randn(rng, 5, 7), randn(rng, 3, 7), randn(rng, 3)
    yl = B.linear(B.asarray(xl), B.asarray(wl), B.asarray(bl))
    assert_close(B.to_numpy(yl), R.linear(xl.astype(np.float64), wl.astype(np.float64),
                                          bl.astype(np.float64)), 1e-5, "linear on cuda")


@pytest.mark.gpu
def test_gpu_lenet_training_step_stays_on_device(cuda_backend, rng):
    from gpucnn.models import lenet5
    from gpucnn.nn import SoftmaxCrossEntropy
    from gpucnn.optim import SGD
    B = cuda_backend
    model = lenet5(backend=B, seed=0)
    loss_fn = SoftmaxCrossEntropy().bind(B)
    opt = SGD(model.parameters(), 0.05, 0.9, backend=B)
    x = B.asarray(rng.standard_normal((16, 1, 28, 28)).astype(np.float32))
    y = B.asarray(rng.integers(0, 10, 16).astype(np.int32), dtype=np.int32)

    def step():
        logits = model.forward(x)
        loss = loss_fn.forward(logits, y)
        model.backward(loss_fn.backward())
        opt.step()
        return loss

    step()                                   # warm-up: kernels loaded, workspaces allocated
    B.synchronize()
    with cuda_mod.count_host_transfers() as t:
        loss = step()
        B.synchronize()
    print(t.summary())
    assert t.count == 0, f"a training step copied data between host and device:\n{t.summary()}"
    assert np.isfinite(float(B.to_numpy(loss)))


def test_a_graph_capture_on_cuda_records_through_cupy_stream_capture():
    """The cuda backend's capture: CuPy's stream capture on a non-blocking stream made
    current; nothing launches while capturing; a replay launches the captured kernels (on the
    backend's GPU); the recording keeps the launches' arrays alive; a host read is refused."""
    from gpucnn.backends.graph import GraphCaptureError
    cp = make_fake_cupy(device_count=2)
    b = cuda_mod.make_cuda_backend(cupy=cp, device=1, use_cublas=False)
    x = b.empty((4, 8))
    b.relu(x)  # the plan, checked at its first launch
    cp.events.clear()
    graph = b.capture(lambda a: b.relu(a), x)
    assert not [e for e in cp.events if e[0].startswith("launch")]  # recorded, not run
    assert ("stream enter", 1) in cp.events and ("stream exit", 1) in cp.events
    assert [k.name for k, *_ in graph.graph.recording.launches] == ["relu_forward"]
    cp.events.clear()
    graph.replay(x)
    assert cp.events == [("graph relu_forward", 1)]
    with pytest.raises(GraphCaptureError, match="to_numpy"):
        b.capture(lambda a: b.to_numpy(b.relu(a)), x)
    assert cp.capturing is None  # the failed capture was ended


def test_cuda_capture_allocates_from_the_default_pool_in_the_relaxed_mode():
    """What the cuda backend's capture relies on for memory (gpucnn/backends/cuda_capture.py),
    against the stub CuPy: the relaxed capture mode, asked for by name (the pool may grow by
    cudaMalloc while capturing); the step's allocations through the context happen inside
    the capture and the graph keeps its capture stream; an array-module constructor is
    refused; a stream-ordered allocator (MemoryAsyncPool) is refused before any capture
    begins, and the device captures again once the default pool is back."""
    from gpucnn.backends.graph import GraphCaptureError
    cp = make_fake_cupy()
    b = cuda_mod.make_cuda_backend(cupy=cp, use_cublas=False)
    x = b.empty((4, 8))
    b.relu(x)
    cp.events.clear()
    graph = b.capture(lambda a: b.relu(a), x)
    kinds = [e[0] for e in cp.events]
    assert ("begin capture", cp.cuda.runtime.streamCaptureModeRelaxed) in cp.events
    assert kinds.index("begin capture") < kinds.index("alloc") < kinds.index("stream exit")
    assert graph.graph.stream is not None and graph.graph.stream.non_blocking
    with pytest.raises(GraphCaptureError, match=r"fakecupy\.zeros \(an allocation outside "
                                                r"the device context\) during graph capture"):
        b.capture(lambda a: b.xp.zeros(3), x)
    assert b.xp is cp and b.ctx.xp is cp and cp.capturing is None
    default = cp.allocator
    cp.allocator = cp.cuda.MemoryAsyncPool().malloc
    cp.events.clear()
    with pytest.raises(GraphCaptureError, match="MemoryAsyncPool.*launched again"):
        b.capture(lambda a: b.relu(a), x)
    assert not [e for e in cp.events if e[0] == "begin capture"]
    assert b.module.recording is None and not b.ctx.capturing
    cp.allocator = default
    b.capture(lambda a: b.relu(a), x).replay(x)
