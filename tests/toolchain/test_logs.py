"""gpucnn.toolchain.logs: the ptxas-resource and diagnostics parsers (NVRTC and nvcc logs)."""
from gpucnn.toolchain.logs import parse_diagnostics, parse_ptxas_log

from .helpers import SPILLING_HELPER_LOG

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

NVCC_LOG = "ptxas info    : 0 bytes gmem\n" + SPILLING_HELPER_LOG + """\
ptxas info    : Compile time = 5.152 ms
ptxas warning : Registers are spilled to local memory in function '_Z6helperPf', 4 bytes spill stores, 4 bytes spill loads
"""


def test_parse_nvrtc_log():
    stats = parse_ptxas_log(NVRTC_LOG)
    s = stats[("smem_k", "sm_80")]
    assert (s.entry, s.registers, s.barriers, s.stack_frame, s.spill_stores, s.spill_loads,
            s.smem, s.cmem, s.cumulative_stack) == (True, 40, 1, 1200, 8, 12, 4096, {0: 364},
                                                    1200)
    a = stats[("add1", "sm_80")]
    assert (a.registers, a.spill_stores, a.spill_loads, a.smem, a.cmem) == (12, 0, 0, 0,
                                                                           {0: 372})
    assert len(stats) == 2


def test_parse_nvcc_log_with_device_function_and_template():
    stats = parse_ptxas_log(NVCC_LOG, "sm_90")
    h = stats[("_Z6helperPf", "sm_90")]
    assert not h.entry and (h.stack_frame, h.spill_stores, h.spill_loads) == (24, 4, 4)
    k = stats[("_Z6kernelIfEvPT_i", "sm_90")]
    assert k.entry and k.registers == 14 and k.cmem == {2: 8}
    errors, warnings, _ = parse_diagnostics(NVCC_LOG)
    assert not errors and len(warnings) == 1 and "spilled" in warnings[0]


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
    errors, warnings, notes = parse_diagnostics(log)
    assert errors == ['k.cu(3): error: identifier "INFINITY" is undefined',
                      "ptxas fatal: Unresolved extern function 'foo'",
                      "error: unrecognized option --bogus"]
    assert warnings == ['k.cu(4): warning #177-D: variable "a" was declared but never referenced']
    assert len(notes) == 1 and "deprecated" in notes[0]
