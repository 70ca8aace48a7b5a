"""gpucnn.toolchain.compilers: NVRTC through ctypes, nvcc, and the one tuple of compile options
(run time and gates alike)."""
from gpucnn.toolchain import COMPILE_OPTIONS
from gpucnn.toolchain.compilers import (compile_nvcc, compile_nvrtc, nvcc_version,
                                        nvrtc_options)
from gpucnn.toolchain.gates import gate_failures

from .helpers import gate, write


def test_nvrtc_is_available(nvrtc):
    major, minor = nvrtc.version()
    assert major >= 12, f"NVRTC {major}.{minor} at {nvrtc.path} is too old (need 12+)"


def test_nvcc_is_available(nvcc):
    major, _minor = nvcc_version(nvcc)
    assert major >= 12


def test_gates_compile_with_the_runtime_options(tmp_path):
    assert "-std=c++17" in COMPILE_OPTIONS
    assert not any("fast_math" in o or "fast-math" in o for o in COMPILE_OPTIONS)
    opts = nvrtc_options("sm_80", tmp_path / "k.cu")
    assert opts[:2] == ["--gpu-architecture=sm_80", "--ptxas-options=-v"]
    assert tuple(opts[2:2 + len(COMPILE_OPTIONS)]) == COMPILE_OPTIONS
    assert opts[-1] == f"--include-path={tmp_path.resolve()}"


def test_infinity_macro_fails_nvrtc(tmp_path, nvrtc):
    """math.h macros (INFINITY, NAN, ...) compile with nvcc but not with NVRTC, which is what
    CuPy uses: the NVRTC gate must catch them."""
    p = write(tmp_path, "inf.cu", 'extern "C" __global__ void neg_inf(float* y) '
                                  '{ y[0] = -INFINITY; }\n')
    res = compile_nvrtc(p, "sm_80", nvrtc)
    assert not res.ok
    assert any("INFINITY" in e for e in res.errors), res.log
    fails = gate_failures(gate(res))
    assert fails and any("INFINITY" in f for f in fails)


def test_nvcc_compiles_with_the_runtime_options_and_catches_warning(tmp_path, nvcc):
    p = write(tmp_path, "warn.cu", 'extern "C" __global__ void k(float* y) '
                                   '{ int unused = 3; y[0] = 1.0f; }\n')
    res = compile_nvcc(p, "sm_80", nvcc)
    assert all(f" {o} " in f" {res.command} " for o in COMPILE_OPTIONS), res.command
    assert res.ok and "k" in res.stats, res.log
    assert any("unused" in f for f in gate_failures(gate(res)))
