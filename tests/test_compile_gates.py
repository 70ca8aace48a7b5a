"""Compile gates for the CUDA kernels (no GPU needed).

Every ``kernels/*.cu`` file must compile with NVRTC (the compiler CuPy uses at run time) for
sm_80 and sm_90, and with nvcc for sm_75/80/86/90: no error, no warning, no spill, registers
within the kernel's budget (``// gpucnn: block=... max_regs=...`` next to the kernel; see
:mod:`gpucnn.kernel_report`). A missing NVRTC or nvcc FAILS these tests (CI installs both);
only an architecture the installed nvcc cannot target at all is skipped.

Also unit tests of the ptxas-log parser, the annotation parser and the occupancy calculator.
"""
from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gpucnn import kernel_report as kr


def _sources():
    try:
        return kr._default_sources()
    except FileNotFoundError:
        return []


SOURCES = _sources()
NVRTC_TARGETS = kr.DEFAULT_NVRTC_TARGETS
NVCC_TARGETS = kr.DEFAULT_NVCC_TARGETS


def _nvrtc():
    try:
        return kr.get_nvrtc()
    except kr.ToolchainUnavailable as exc:
        pytest.fail(f"NVRTC is required for the compile gates and was not found: {exc}",
                    pytrace=False)


def _nvcc():
    try:
        path = kr.find_nvcc()
        kr.nvcc_version(path)
        return path
    except (kr.ToolchainUnavailable, OSError) as exc:
        pytest.fail(f"nvcc is required for the compile gates and was not usable: {exc}",
                    pytrace=False)


def _failure_text(records, result):
    fails = kr.gate_failures(records)
    tail = "\n".join(result.log.strip().splitlines()[-40:])
    return ("\n".join(fails) + f"\n\n{result.compiler} command: {result.command}\n"
            f"compiler log (tail):\n{tail}\n\n" + kr.render_table(records))


def _gate(result):
    path = Path(result.file)
    decls, problems = kr.parse_kernel_decls(path.read_text(), path.name)
    return kr.evaluate(result, decls, problems)


# ---- the toolchain ---------------------------------------------------------------------------

def test_nvrtc_is_available():
    nv = _nvrtc()
    major, minor = nv.version()
    assert major >= 12, f"NVRTC {major}.{minor} at {nv.path} is too old (need 12+)"


def test_nvcc_is_available():
    major, _minor = kr.nvcc_version(_nvcc())
    assert major >= 12


def test_kernel_sources_exist():
    assert SOURCES, "no kernels/*.cu found (gpucnn.backends.device.kernel_sources())"


# ---- the gates on every kernel source ---------------------------------------------------------

@pytest.mark.parametrize("target", NVRTC_TARGETS)
@pytest.mark.parametrize("source", SOURCES, ids=[s.name for s in SOURCES])
def test_nvrtc_gate(source, target):
    res = kr.compile_nvrtc(source, target, _nvrtc())
    records = _gate(res)
    assert res.ok and not kr.gate_failures(records), _failure_text(records, res)
    assert any(r.kernel != "*" for r in records), f"{source.name}: no kernel compiled"


_nvcc_results: dict = {}
_nvcc_lock = threading.Lock()


def _nvcc_result(source, target):
    """nvcc results, compiled for every (source, target) on first use, two at a time."""
    nvcc = _nvcc()
    with _nvcc_lock:
        if not _nvcc_results:
            jobs = [(s, t) for s in SOURCES for t in NVCC_TARGETS]
            with ThreadPoolExecutor(max_workers=2) as ex:
                for (s, t), r in zip(jobs, ex.map(lambda j: kr.compile_nvcc(j[0], j[1], nvcc),
                                                  jobs)):
                    _nvcc_results[(s, t)] = r
        if (source, target) not in _nvcc_results:
            _nvcc_results[(source, target)] = kr.compile_nvcc(source, target, nvcc)
        return _nvcc_results[(source, target)]


@pytest.mark.parametrize("target", NVCC_TARGETS)
@pytest.mark.parametrize("source", SOURCES, ids=[s.name for s in SOURCES])
def test_nvcc_gate(source, target):
    res = _nvcc_result(source, target)
    # The issue requires these targets: an nvcc that cannot build one fails the gate.
    assert not res.unsupported, f"this nvcc cannot build {target} at all: {res.notes}"
    records = _gate(res)
    assert res.ok and not kr.gate_failures(records), _failure_text(records, res)


# ---- the gates catch what they must (temporary .cu files) ------------------------------------

def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_infinity_macro_fails_nvrtc(tmp_path):
    """math.h macros (INFINITY, NAN, ...) compile with nvcc but not with NVRTC, which is what
    CuPy uses: the NVRTC gate must catch them."""
    p = _write(tmp_path, "inf.cu", 'extern "C" __global__ void neg_inf(float* y) '
                                   '{ y[0] = -INFINITY; }\n')
    res = kr.compile_nvrtc(p, "sm_80", _nvrtc())
    assert not res.ok
    assert any("INFINITY" in e for e in res.errors), res.log
    fails = kr.gate_failures(_gate(res))
    assert fails and any("INFINITY" in f for f in fails)


def test_warning_fails_gate(tmp_path):
    p = _write(tmp_path, "warn.cu", 'extern "C" __global__ void k(float* y) '
                                    '{ int unused = 3; y[0] = 1.0f; }\n')
    res = kr.compile_nvrtc(p, "sm_90", _nvrtc())
    assert res.ok and res.warnings, res.log
    fails = kr.gate_failures(_gate(res))
    assert any("warning" in f and "unused" in f for f in fails), fails


SPILLER = r'''
extern "C" __global__ void hungry(float* y, const float* x, int n) {
    float acc[64];
#pragma unroll
    for (int j = 0; j < 64; j++) acc[j] = x[threadIdx.x + j * n];
    float s = 0.0f;
#pragma unroll
    for (int r = 0; r < 8; r++) {
#pragma unroll
        for (int j = 0; j < 64; j++) { acc[j] = acc[j] * acc[(j + r + 1) & 63] + x[j]; s += acc[j]; }
    }
    y[threadIdx.x] = s;
}
'''


def test_spill_fails_gate(tmp_path):
    p = _write(tmp_path, "spill.cu", SPILLER)
    res = kr.compile_nvrtc(p, "sm_80", _nvrtc(), extra_options=("--maxrregcount=32",))
    assert res.ok, res.log
    st = res.stats["hungry"]
    assert st.spill_stores > 0 and st.spill_loads > 0, res.log
    fails = kr.gate_failures(_gate(res))
    assert any("spills" in f for f in fails), fails


def test_register_budget_fails_gate(tmp_path):
    p = _write(tmp_path, "budget.cu", "// gpucnn: block=128 max_regs=8\n" + SPILLER)
    res = kr.compile_nvrtc(p, "sm_80", _nvrtc())
    records = _gate(res)
    rec = next(r for r in records if r.kernel == "hungry")
    assert rec.block == 128 and rec.registers > 8
    assert any("declared max_regs 8" in p for p in rec.problems), rec.problems


def test_clean_kernel_passes(tmp_path):
    p = _write(tmp_path, "ok.cu", '// gpucnn: block=128 max_regs=32\n'
               'extern "C" __global__ void axpy(float* y, const float* x, float a, int n) {\n'
               '    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n;\n'
               '         i += blockDim.x * gridDim.x) y[i] += a * x[i];\n}\n')
    for t in NVRTC_TARGETS:
        res = kr.compile_nvrtc(p, t, _nvrtc())
        records = _gate(res)
        assert not kr.gate_failures(records), _failure_text(records, res)
        (rec,) = records
        assert rec.kernel == "axpy" and rec.block == 128 and rec.reg_budget == 32
        assert 0 < rec.registers <= 32 and rec.occupancy == 1.0


def test_nvcc_catches_warning(tmp_path):
    p = _write(tmp_path, "warn.cu", 'extern "C" __global__ void k(float* y) '
                                    '{ int unused = 3; y[0] = 1.0f; }\n')
    res = kr.compile_nvcc(p, "sm_80", _nvcc())
    assert res.ok and "k" in res.stats, res.log
    assert any("unused" in f for f in kr.gate_failures(_gate(res)))


# ---- the ptxas-log and diagnostics parsers ---------------------------------------------------

NVRTC_LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'smem_k' for 'sm_80'
ptxas info    : Function properties for smem_k
ptxas         .     1200 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 1200 bytes cumulative stack size, 4096 bytes smem, 364 bytes cmem[0]
ptxas info    : Compile time = 94.211 ms
ptxas info    : Compiling entry function 'add1' for 'sm_80'
ptxas info    : Function properties for add1
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 12 registers, used 0 barriers, 372 bytes cmem[0]
ptxas info    : Compile time = 3.048 ms
"""

NVCC_LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Function properties for _Z6helperPf
    24 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Compiling entry function '_Z6kernelIfEvPT_i' for 'sm_90'
ptxas info    : Function properties for _Z6kernelIfEvPT_i
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 14 registers, used 0 barriers, 8 bytes cmem[2]
ptxas info    : Compile time = 5.152 ms
ptxas warning : Registers are spilled to local memory in function '_Z6helperPf', 4 bytes spill stores, 4 bytes spill loads
"""


def test_parse_nvrtc_log():
    stats = kr.parse_ptxas_log(NVRTC_LOG)
    s = stats[("smem_k", "sm_80")]
    assert (s.entry, s.registers, s.barriers, s.stack_frame, s.spill_stores, s.spill_loads,
            s.smem, s.cmem, s.cumulative_stack) == (True, 40, 1, 1200, 8, 12, 4096, {0: 364},
                                                    1200)
    a = stats[("add1", "sm_80")]
    assert (a.registers, a.spill_stores, a.spill_loads, a.smem, a.cmem) == (12, 0, 0, 0,
                                                                           {0: 372})
    assert len(stats) == 2


def test_parse_nvcc_log_with_device_function_and_template():
    stats = kr.parse_ptxas_log(NVCC_LOG, "sm_90")
    h = stats[("_Z6helperPf", "sm_90")]
    assert not h.entry and (h.stack_frame, h.spill_stores, h.spill_loads) == (24, 4, 4)
    k = stats[("_Z6kernelIfEvPT_i", "sm_90")]
    assert k.entry and k.registers == 14 and k.cmem == {2: 8}
    assert kr._base_name("_Z6kernelIfEvPT_i") == "kernel"
    errors, warnings, _ = kr.parse_diagnostics(NVCC_LOG)
    assert not errors and len(warnings) == 1 and "spilled" in warnings[0]
    # a device-function spill fails the gate even though every kernel is clean
    res = kr.CompileResult(file="t.cu", target="sm_90", compiler="nvcc", ok=True,
                           stats={n: s for (n, _t), s in stats.items()})
    recs = kr.evaluate(res, {})
    assert any("device function _Z6helperPf spills" in f for f in kr.gate_failures(recs))


def test_parse_diagnostics():
    log = """\
k.cu(3): error: identifier "INFINITY" is undefined
k.cu(4): warning #177-D: variable "a" was declared but never referenced
Remark: The warnings can be suppressed with "-diag-suppress <warning-number>"
k.cu(9): remark: something harmless
nvcc warning : The 'compute_75' architecture is deprecated, and will be removed
ptxas fatal   : Unresolved extern function 'foo'
error: unrecognized option --bogus
2 errors detected in the compilation of "k.cu".
"""
    errors, warnings, notes = kr.parse_diagnostics(log)
    assert errors == ['k.cu(3): error: identifier "INFINITY" is undefined',
                      "ptxas fatal: Unresolved extern function 'foo'",
                      "error: unrecognized option --bogus"]
    assert warnings == ['k.cu(4): warning #177-D: variable "a" was declared but never referenced']
    assert len(notes) == 1 and "deprecated" in notes[0]


# ---- annotations -------------------------------------------------------------------------

ANNOTATED = r'''
#define THREADS 128
// gpucnn: defaults max_regs=64

// Scales x.
// gpucnn: block=THREADS
extern "C" __global__ void scale(float* x, float a, int n) { }

extern "C" __global__ void __launch_bounds__(512) wide(float* x) { }

extern "C"
__global__ void tile(float* x)  // gpucnn: block=16x16 dyn_smem=4K min_occupancy=50%
{ }

template <typename T>
__global__ void generic(T* x) { }

extern "C" {
__global__ void inside(float* x) { }
}
// gpucnn: kernel=inside block=64 max_regs=40
/* __global__ void commented_out(float* x) { } */
'''


def test_parse_kernel_decls():
    decls, problems = kr.parse_kernel_decls(ANNOTATED, "a.cu")
    assert problems == []
    assert set(decls) == {"scale", "wide", "tile", "generic", "inside"}
    s = decls["scale"]
    assert (s.block, s.max_regs, s.extern_c, s.line) == (128, 64, True, 7)
    w = decls["wide"]
    assert (w.block, w.launch_bounds, w.max_regs) == (512, 512, 64)
    t = decls["tile"]
    assert (t.block, t.block_dims, t.dyn_smem, t.min_occupancy) == (256, (16, 16, 1), 4096, 0.5)
    assert decls["generic"].extern_c is False and decls["generic"].block == kr.DEFAULT_BLOCK
    i = decls["inside"]
    assert (i.extern_c, i.block, i.max_regs) == (True, 64, 40)


def test_annotation_problems_fail_gate():
    decls, problems = kr.parse_kernel_decls(
        '// gpucnn: block=256 max_reg=32\nextern "C" __global__ void k(float* x) { }\n'
        '// gpucnn: kernel=missing block=64\n', "b.cu")
    assert any("unknown annotation key 'max_reg'" in p for p in problems)
    assert any("'missing'" in p and "not declared" in p for p in problems)
    res = kr.CompileResult(file="b.cu", target="sm_80", compiler="nvrtc", ok=True,
                           stats={"k": kr.KernelStats("k", "sm_80", registers=10)})
    assert len(kr.gate_failures(kr.evaluate(res, decls, problems))) == 2


def test_missing_kernel_in_ptxas_output_fails():
    decls, _ = kr.parse_kernel_decls('extern "C" __global__ void k(float* x) { }\n', "c.cu")
    res = kr.CompileResult(file="c.cu", target="sm_80", compiler="nvrtc", ok=True, stats={})
    assert any("missing from the ptxas output" in f
               for f in kr.gate_failures(kr.evaluate(res, decls)))


# ---- the occupancy calculator ------------------------------------------------------------

@pytest.mark.parametrize("arch,block,regs,smem,dyn,blocks,occ", [
    # registers: 32 regs * 32 threads = 1024 per warp; 16 warps per sub-partition -> 64 warps
    ("sm_80", 256, 32, 0, 0, 8, 1.0),
    # 128 regs -> 4096 per warp -> 4 warps per sub-partition -> 16 warps -> 2 blocks of 8
    ("sm_80", 256, 128, 0, 0, 2, 0.25),
    ("sm_80", 256, 64, 0, 0, 4, 0.5),
    # 255 regs -> 8160 rounded to 8192 -> 2 warps per sub-partition -> 8 warps -> 1 block
    ("sm_80", 256, 255, 0, 0, 1, 0.125),
    # 40 regs -> 1280 per warp -> 12 warps per sub-partition (not 51 over the whole file)
    ("sm_80", 96, 40, 0, 0, 16, 0.75),
    ("sm_80", 1024, 64, 0, 0, 1, 0.5),
    # 65 regs -> 2080 -> 2304 per warp * 32 warps > 64K registers: cannot launch
    ("sm_80", 1024, 65, 0, 0, 0, 0.0),
    # 48 KB static smem + 1 KB reserved = 50176 B per block: 3 fit in 164 KB, 4 in 228 KB
    ("sm_80", 256, 16, 48 * 1024, 0, 3, 0.375),
    ("sm_90", 256, 16, 48 * 1024, 0, 4, 0.5),
    # the 32-blocks-per-SM limit
    ("sm_80", 32, 8, 0, 0, 32, 0.5),
    # 100 KB dynamic smem: one block of 2 warps
    ("sm_80", 64, 0, 0, 100 * 1024, 1, 2 / 64),
    # more than the opt-in maximum per block
    ("sm_80", 64, 16, 0, 164 * 1024, 0, 0.0),
    ("sm_86", 256, 32, 0, 0, 6, 1.0),       # 48 warps per SM
    ("sm_75", 256, 32, 0, 0, 4, 1.0),       # 32 warps per SM
    ("sm_90", 256, 96, 17 * 1024, 0, 2, 0.25),
    ("sm_80", 2048, 16, 0, 0, 0, 0.0),      # more than 1024 threads
])
def test_occupancy(arch, block, regs, smem, dyn, blocks, occ):
    o = kr.occupancy(arch, block, regs, smem, dyn)
    assert o.blocks_per_sm == blocks, o
    assert o.occupancy == pytest.approx(occ), o


def test_occupancy_limiter_and_fit_limit():
    assert kr.occupancy("sm_80", 256, 128).limiter == "registers"
    assert kr.occupancy("sm_80", 256, 16, 48 * 1024).limiter == "shared memory"
    assert kr.occupancy("sm_80", 32, 8).limiter == "blocks"
    assert kr.register_fit_limit("sm_80", 256) == 255
    assert kr.register_fit_limit("sm_80", 512) == 128
    assert kr.register_fit_limit("sm_80", 1024) == 64
    assert kr.register_fit_limit("sm_80", 768) == 80   # 24 warps * 2560 <= 64K


def test_block_that_cannot_fit_fails_gate():
    decls, _ = kr.parse_kernel_decls('// gpucnn: block=1024\n'
                                     'extern "C" __global__ void k(float* x) { }\n', "d.cu")
    res = kr.CompileResult(file="d.cu", target="sm_80", compiler="nvrtc", ok=True,
                           stats={"k": kr.KernelStats("k", "sm_80", registers=72)})
    (rec,) = kr.evaluate(res, decls)
    assert rec.reg_budget == 64 and rec.blocks_per_sm == 0
    assert any("does not fit" in p for p in rec.problems), rec.problems


# ---- the report and its command line -----------------------------------------------------

def test_report_cli(tmp_path, capsys):
    _nvrtc()
    good = _write(tmp_path, "good.cu", '// gpucnn: block=128\nextern "C" __global__ void '
                  'inc(float* y, int n) { int i = blockIdx.x * blockDim.x + threadIdx.x; '
                  'if (i < n) y[i] += 1.0f; }\n')
    bad = _write(tmp_path, "bad.cu", 'extern "C" __global__ void k(float* y) '
                 '{ y[0] = INFINITY; }\n')
    out_json = tmp_path / "r" / "report.json"
    assert kr.main([str(good), "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "good:inc" in text and "all gates passed" in text
    data = json.loads(out_json.read_text())
    assert data["ok"] is True and data["toolchain"]["nvrtc"]["version"]
    assert {(r["kernel"], r["target"]) for r in data["records"]} == {("inc", "sm_80"),
                                                                     ("inc", "sm_90")}
    assert kr.main([str(good), str(bad), "--targets", "sm_90"]) == 1
    text = capsys.readouterr().out
    assert "gate failures" in text and "INFINITY" in text


def test_orphan_annotation_is_a_problem():
    _decls, problems = kr.parse_kernel_decls(
        '// gpucnn: block=64\nint helper = 1;\nextern "C" __global__ void k(float* x) { }\n',
        "e.cu")
    assert len(problems) == 1 and "not next to a kernel" in problems[0]
