import os

import numpy as np
import pytest

from harness import (EMU_CXX, NATIVE_CXX, SEED_KEY, compiler_problem, cuda_backend,
                     missing_compiler, missing_tool, seed_note, stable_seed)

EMU_ORDERS = ("forward", "reverse", "random")

# Tests check every kernel launch fully, not only each plan's first (gpucnn/ops/launch.py);
# tests of the production launch path (test_dispatch_depth, test_launch) turn it off on their
# own backends.
os.environ.setdefault("GPUCNN_CHECK_LAUNCHES", "1")


# Tests taking one of these fixtures run gpucnn's kernels on the device backend (emu here,
# the GPU under --device-backend cuda). They get the "device" marker so that a GPU machine,
# lent for minutes, selects exactly them (-m device) rather than running through the ~1,300
# CPU-only tests around them.
DEVICE_FIXTURES = frozenset({"device_backend", "device_forward", "cuda_backend",
                             "device_precision", "device_bf16"})


def pytest_addoption(parser):
    parser.addoption("--device-backend", default=os.environ.get("GPUCNN_TEST_DEVICE", "emu"),
                     choices=("emu", "cuda"),
                     help="run the kernel equivalence suite on the emulator (default) or a GPU")


# tryfirst: the marker must be on the items before -m deselects by marker (the mark plugin's
# own pytest_collection_modifyitems)
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if DEVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())) \
                or item.get_closest_marker("gpu"):
            item.add_marker(pytest.mark.device)


@pytest.fixture
def rng(request):
    # A seed per test (derived from its id) so inputs differ between tests but not between
    # runs; a failure prints it (pytest_runtest_makereport).
    seed = stable_seed(request.node.nodeid)
    request.node.stash[SEED_KEY] = seed
    return np.random.default_rng(seed)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    seed = item.stash.get(SEED_KEY, None)
    if report.failed and seed is not None:
        note = seed_note(item.nodeid, seed)
        # in the traceback's own sections, so --show-capture=no does not drop it
        if hasattr(report.longrepr, "addsection"):
            report.longrepr.addsection("seed", note)
        else:
            report.sections.append(("seed", note))
    return report


@pytest.fixture(scope="session")
def numpy_backend():
    from gpucnn.backends import get_backend
    return get_backend("numpy")


@pytest.fixture(scope="session")
def reference_backend():
    """The plain definitions (gpucnn/ops/*reference*): the oracle, used in float64."""
    from gpucnn.backends import get_backend
    return get_backend("reference")


_device_cache = {}


def _device_kind(config):
    return config.getoption("--device-backend")


def _device(kind, order, precision="fp32"):
    key = (kind, order, precision)
    if key not in _device_cache:
        if kind == "cuda":
            from gpucnn.backends import get_backend
            _device_cache[key] = cuda_backend(lambda: get_backend("cuda", precision),
                                              required=True)
        else:
            from gpucnn.backends import emu
            from gpucnn.backends.device import make_emu_backend
            problem = compiler_problem(emu.CXX)
            if problem:  # one line naming the compiler, not a build traceback per test
                missing_tool(EMU_CXX, problem)
            backend = make_emu_backend(order=order, checks=True, seed=1234)
            backend.use_precision(precision)
            _device_cache[key] = backend
    return _device_cache[key]


@pytest.fixture(params=EMU_ORDERS)
def device_backend(request):
    """The kernels under test: on emu, every test runs with threads scheduled between
    barriers in forward, reverse and random order (races show up as mismatches)."""
    kind = _device_kind(request.config)
    if kind == "cuda" and request.param != "forward":
        pytest.skip("thread order is only controllable on the emulator")
    return _device(kind, request.param)


@pytest.fixture(params=EMU_ORDERS)
def device_bf16(request):
    """The device backend computing in bf16 (where uint16 tensors are bf16 activations,
    gpucnn/ops/storage.py), in each emulator thread order."""
    kind = _device_kind(request.config)
    if kind == "cuda" and request.param != "forward":
        pytest.skip("thread order is only controllable on the emulator")
    return _device(kind, request.param, "bf16")


@pytest.fixture
def device_precision(request):
    """``make(precision)``: the device backend (forward thread order) computing its GEMMs and
    convolutions in that precision (gpucnn/ops/precision.py)."""
    kind = _device_kind(request.config)
    return lambda precision, order="forward": _device(kind, order, precision)


@pytest.fixture
def device_forward(request):
    """The device backend in its default (forward) thread order, for whole-network tests."""
    return _device(_device_kind(request.config), "forward")


@pytest.fixture(scope="session")
def native_kernels(request):
    """The compiled CPU kernels (direct.cpp): without g++ their tests fail, as the README
    promises, each with one line naming the compiler (not a skip, not a traceback); under
    --device-backend cuda they skip instead (harness.missing_compiler)."""
    from gpucnn.ops.conv import direct
    if not direct.available():
        missing_compiler(NATIVE_CXX, direct.unavailable_reason(), _device_kind(request.config))
    return direct


@pytest.fixture(scope="session")
def native_compiler(request):
    """The C++ compiler gpucnn/cpu/native.py builds with ($GPUCNN_CXX, default g++)."""
    from gpucnn.cpu import native
    problem = compiler_problem(native.compiler())
    if problem:
        missing_compiler(NATIVE_CXX, problem, _device_kind(request.config))
    return native.compiler()


@pytest.fixture(scope="session")
def lenet5_checkpoint(tmp_path_factory):
    """A LeNet-5 checkpoint from one short epoch on Fashion-MNIST (numpy): for the commands
    that read a trained model (export, show). Read it, never write it."""
    from gpucnn.train import TrainConfig, train
    path = tmp_path_factory.mktemp("ckpt") / "lenet5.npz"
    train(TrainConfig(model="lenet5", dataset="fashion-mnist", epochs=1, batch_size=32,
                      limit=64, test_limit=64, backend="numpy", checkpoint=str(path),
                      progress=False))
    return path
