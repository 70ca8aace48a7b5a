"""One build everywhere: the gates compile with exactly the options CuPy's RawModule uses
(ours + what CuPy adds), under NVRTC 12 (cupy-cuda12x) and NVRTC 13 (cupy-cuda13x)."""
import ast
import inspect
import textwrap

import pytest

from gpucnn.toolchain import kernel_sources
from gpucnn.toolchain.compilers import (COMPILE_OPTIONS, CUPY_ADDED_OPTIONS, RUNTIME_OPTIONS,
                                        compile_nvrtc, get_nvrtc, nvrtc_by_major, nvrtc_options)
from gpucnn.toolchain.gates import gate_failures

from .helpers import failure_text, gate

MAJORS = (12, 13)  # cupy-cuda12x and cupy-cuda13x; the test extra installs both NVRTCs


def test_cupy_adds_exactly_what_the_gates_add():
    """Read CuPy's own compile path: every option it appends on its own is in ours."""
    try:
        from cupy.cuda import compiler
    except Exception as exc:  # noqa: BLE001 - CuPy absent or broken: nothing to compare
        pytest.skip(f"CuPy is not importable here ({type(exc).__name__}: {exc})")
    fn = ast.parse(textwrap.dedent(inspect.getsource(compiler._compile_with_cache_cuda))).body[0]
    # `options += (...)` directly in the body runs on every compile (the others sit under an
    # `if`: debug builds, jitify, LTO)
    added = [elt.value for stmt in fn.body if isinstance(stmt, ast.AugAssign)
             and getattr(stmt.target, "id", "") == "options" and isinstance(stmt.value, ast.Tuple)
             for elt in stmt.value.elts if isinstance(elt, ast.Constant)]
    assert added == list(CUPY_ADDED_OPTIONS), added
    assert RUNTIME_OPTIONS == COMPILE_OPTIONS + CUPY_ADDED_OPTIONS


def test_gate_options_are_the_runtime_options():
    opts = nvrtc_options("sm_90")
    assert all(o in opts for o in RUNTIME_OPTIONS) and "-ftz=true" in opts


@pytest.fixture(scope="module")
def nvrtc_libs():
    found = nvrtc_by_major()
    missing = [m for m in MAJORS if m not in found]
    if missing:
        pytest.fail(f"NVRTC {missing} not found (found {found}); install the test extra: "
                    f"pip install nvidia-cuda-nvrtc-cu12 'nvidia-cuda-nvrtc>=13'", pytrace=False)
    return found


@pytest.mark.parametrize("major", MAJORS)
@pytest.mark.parametrize("source", kernel_sources(), ids=lambda p: p.name)
def test_every_kernel_passes_the_gate_under_each_nvrtc(nvrtc_libs, major, source):
    nv = get_nvrtc(nvrtc_libs[major])
    assert nv.version()[0] == major
    res = compile_nvrtc(source, "sm_90", nvrtc=nv)
    records = gate(res)
    assert not gate_failures(records), failure_text(records, res)
