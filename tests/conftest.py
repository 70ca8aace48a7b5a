import os

import numpy as np
import pytest

EMU_ORDERS = ("forward", "reverse", "random")


def pytest_addoption(parser):
    parser.addoption("--device-backend", default=os.environ.get("GPUCNN_TEST_DEVICE", "emu"),
                     choices=("emu", "cuda"),
                     help="run the kernel equivalence suite on the emulator (default) or a GPU")


@pytest.fixture
def rng(request):
    # A fresh seed per test (derived from its name) so inputs differ between tests.
    return np.random.default_rng(abs(hash(request.node.nodeid)) % 2**32)


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


def _device(kind, order):
    key = (kind, order)
    if key not in _device_cache:
        if kind == "cuda":
            from gpucnn.backends import get_backend
            _device_cache[key] = get_backend("cuda")
        else:
            from gpucnn.backends.device import make_emu_backend
            _device_cache[key] = make_emu_backend(order=order, checks=True, seed=1234)
    return _device_cache[key]


@pytest.fixture(params=EMU_ORDERS)
def device_backend(request):
    """The kernels under test: on emu, every test runs with threads scheduled between
    barriers in forward, reverse and random order (races show up as mismatches)."""
    kind = request.config.getoption("--device-backend")
    if kind == "cuda" and request.param != "forward":
        pytest.skip("thread order is only controllable on the emulator")
    return _device(kind, request.param)


@pytest.fixture
def device_forward(request):
    """The device backend in its default (forward) thread order, for whole-network tests."""
    return _device(request.config.getoption("--device-backend"), "forward")
