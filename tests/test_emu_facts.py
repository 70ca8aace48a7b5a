"""What the emulator's runtime (emu_runtime.cpp) and its Python side share: the CUDA limits
(gpucnn/toolchain/limits.py, handed to the runtime's build) and the ABI, the codes a launch
takes and returns, and the layout of its error record; all reported by every module library
and compared when it is loaded."""
import numpy as np
import pytest

from gpucnn.backends.emu import EmuBuildError, EmuLaunchError, EmuModule
from gpucnn.cpu import native
from gpucnn.toolchain.limits import (BLOCK_DIM_MAX, GRID_DIM_MAX, MAX_THREADS_PER_BLOCK,
                                     SMEM_PER_BLOCK_DEFAULT)

# Each test loads its own source: a library that passed the check once is not checked again
# in this process.
_KERNEL = 'extern "C" __global__ void {name}(float* x) {{ x[threadIdx.x] = 1.0f; }}\n'


def test_the_runtime_reports_the_limits_it_was_built_with():
    mod = EmuModule(_KERNEL.format(name="facts_limits"), checks=True)
    facts = native.facts(mod.library.lib, "gpucnn_emu_facts")
    assert facts["GPUCNN_EMU_DYN_SMEM_MAX"] == SMEM_PER_BLOCK_DEFAULT
    assert facts["GPUCNN_EMU_MAX_THREADS"] == MAX_THREADS_PER_BLOCK
    assert [facts[f"GPUCNN_EMU_GRID_{a}_MAX"] for a in "XYZ"] == list(GRID_DIM_MAX)
    assert [facts[f"GPUCNN_EMU_BLOCK_{a}_MAX"] for a in "XYZ"] == list(BLOCK_DIM_MAX)


@pytest.mark.parametrize("grid,block", [
    ((GRID_DIM_MAX[0] + 1, 1, 1), 1), ((1, GRID_DIM_MAX[1] + 1, 1), 1),
    ((1, 1, GRID_DIM_MAX[2] + 1), 1), (1, (1, 1, BLOCK_DIM_MAX[2] + 1)),
    (1, (MAX_THREADS_PER_BLOCK // 2, 3, 1))])
def test_the_runtime_refuses_launches_past_the_limits(grid, block):
    f = EmuModule(_KERNEL.format(name="facts_launch")).get_function("facts_launch")
    x = np.zeros(4, np.float32)
    with pytest.raises(EmuLaunchError, match="invalid launch configuration"):
        f(grid, block, (x,))


@pytest.mark.parametrize("name", ["EmuErr.addr", "sizeof EmuErr", "GPUCNN_EMU_DYN_SMEM_MAX",
                                  "GPUCNN_EMU_ABI", "ERR_SMEM", "ORDER_RANDOM", "CHECKS_ON"])
def test_a_fact_changed_on_one_side_fails_the_load_naming_it(name, monkeypatch):
    real = native.facts

    def doctored(lib, symbol):  # the runtime as if `name` had changed on the C side only
        facts = real(lib, symbol)
        facts[name] += 8
        return facts

    monkeypatch.setattr(native, "facts", doctored)
    with pytest.raises(EmuBuildError, match=f"does not match gpucnn/backends/emu: {name}: "
                                            f"the library has"):
        EmuModule(_KERNEL.format(name="facts_mismatch"))


def test_a_fact_the_runtime_does_not_report_fails_the_load(monkeypatch):
    real = native.facts

    def without_trap(lib, symbol):
        facts = real(lib, symbol)
        del facts["ERR_TRAP"]
        return facts

    monkeypatch.setattr(native, "facts", without_trap)
    with pytest.raises(EmuBuildError, match="ERR_TRAP: Python expects 4, the library does not"):
        EmuModule(_KERNEL.format(name="facts_mismatch"))
