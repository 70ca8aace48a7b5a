"""Every tool the suite needs, one case each, so a machine missing one says which by name
here (the tests that need it fail too, each with one line pointing here). It lives beside the
toolchain fixtures (nvcc, NVRTC, nvdisasm) to use them as they are."""
from pathlib import Path

import pytest

from gpucnn.data import dataset_info
from harness import EMU_CXX, compiler_problem, missing_tool

FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def _emu_compiler(request):
    from gpucnn.backends import emu
    problem = compiler_problem(emu.CXX)
    if problem:
        missing_tool(EMU_CXX, problem)


def _fashion_mnist(request):
    # the system copy: the data tests check that the real files are read from it
    where = Path(dataset_info("fashion-mnist").system_dirs[0])
    absent = [f for f in FASHION_FILES if not (where / f).is_file()]
    if absent:
        missing_tool("the Fashion-MNIST files (apt-get install dataset-fashion-mnist)",
                     f"{', '.join(absent)} not in {where}")


def _fixture(name):
    return lambda request: request.getfixturevalue(name)


TOOLS = {
    "g++ for the emulator": _emu_compiler,
    "g++ for the native CPU kernels": _fixture("native_kernels"),
    "nvcc": _fixture("nvcc"),
    "NVRTC": _fixture("nvrtc"),
    "nvdisasm": _fixture("nvdisasm"),
    "Fashion-MNIST": _fashion_mnist,
}


@pytest.mark.parametrize("tool", TOOLS)
def test_required_tool_is_installed(request, tool):
    TOOLS[tool](request)
