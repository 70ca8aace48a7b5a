"""Fixtures of the toolchain tests: the compilers. A missing NVRTC or nvcc FAILS the tests
that need one (CI installs both)."""
import pytest

from gpucnn.toolchain.compilers import ToolchainUnavailable, find_nvcc, get_nvrtc, nvcc_version


@pytest.fixture(scope="session")
def nvrtc():
    try:
        return get_nvrtc()
    except ToolchainUnavailable as exc:
        pytest.fail(f"NVRTC is required for the compile gates and was not found: {exc}",
                    pytrace=False)


@pytest.fixture(scope="session")
def nvcc():
    try:
        path = find_nvcc()
        nvcc_version(path)
        return path
    except (ToolchainUnavailable, OSError) as exc:
        pytest.fail(f"nvcc is required for the compile gates and was not usable: {exc}",
                    pytrace=False)
