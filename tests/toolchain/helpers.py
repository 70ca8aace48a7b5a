"""Shared by the toolchain tests: a compile result through the gates, and a readable failure."""
from pathlib import Path

from gpucnn.toolchain.gates import evaluate, gate_failures
from gpucnn.toolchain.includes import with_local_headers
from gpucnn.toolchain.parse import parse_kernel_decls
from gpucnn.toolchain.report import render_table


# ptxas output for a kernel whose device-function helper spills (nvcc and NVRTC print it alike).
SPILLING_HELPER_LOG = """\
ptxas info    : Function properties for _Z6helperPf
    24 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Compiling entry function '_Z6kernelIfEvPT_i' for 'sm_90'
ptxas info    : Function properties for _Z6kernelIfEvPT_i
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 14 registers, used 0 barriers, 8 bytes cmem[2]
"""


def gate(result):
    path = Path(result.file)
    decls, problems = parse_kernel_decls(with_local_headers(path.read_text(), [path.parent]),
                                         path.name)
    return evaluate(result, decls, problems)


def failure_text(records, result):
    tail = "\n".join(result.log.strip().splitlines()[-40:])
    return ("\n".join(gate_failures(records)) + f"\n\n{result.compiler} command: "
            f"{result.command}\ncompiler log (tail):\n{tail}\n\n" + render_table(records))


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p
