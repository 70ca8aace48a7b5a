"""Fixtures of the toolchain tests: the compilers and the disassembler. A missing one FAILS
the tests that need it (CI installs all of them)."""
import pytest

from gpucnn.toolchain.compilers import ToolchainUnavailable, find_nvcc, get_nvrtc, nvcc_version
from gpucnn.toolchain.sass import find_nvdisasm


def _required(what, find):
    try:
        return find()
    except (ToolchainUnavailable, OSError) as exc:
        pytest.fail(f"{what} was not found or not usable: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def nvrtc():
    return _required("NVRTC (needed by the compile gates)", get_nvrtc)


@pytest.fixture(scope="session")
def nvcc():
    def usable():
        path = find_nvcc()
        nvcc_version(path)
        return path
    return _required("nvcc (needed by the compile gates)", usable)


@pytest.fixture(scope="session")
def nvdisasm():
    return _required("nvdisasm (needed by the SASS gate)", find_nvdisasm)
