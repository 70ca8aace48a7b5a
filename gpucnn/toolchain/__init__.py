"""gpucnn's CUDA toolchain: everything that reads, compiles or budgets ``kernels/*.cu``.

A leaf of the package (it imports only the standard library and NumPy), so the runtime reads
from it and never the reverse:

* :mod:`.sources` — where the kernel sources are, and their ``#define``s, block sizes and
  signatures, read once (:func:`source_defines`, :func:`kernel_block`,
  :func:`kernel_signatures`);
* :mod:`.parse` — the one parser of ``.cu`` text (signatures, ``#define``s,
  ``__launch_bounds__``, the ``// gpucnn:`` budget annotations);
* :mod:`.launch_args` — launch arguments checked against a kernel's C signature;
* :mod:`.limits` — CUDA's launch limits, per-architecture SM resources, occupancy;
* :mod:`.compilers` / :mod:`.logs` — NVRTC (ctypes) and nvcc, :data:`COMPILE_OPTIONS`, and
  their logs (ptxas resources, diagnostics);
* :mod:`.gates` / :mod:`.report` — the compile gates and ``python -m gpucnn.toolchain``, the
  resource report (``gpucnn kernels --report``);
* :mod:`.sass` — the sm_90 SASS of GEMM-like kernels (nvdisasm): main-loop FFMA share and
  load widths, and their gate.
"""
from .compilers import COMPILE_OPTIONS
from .launch_args import check_launch_args
from .includes import with_local_headers
from .parse import Param, parse_kernels, parse_launch_bounds
from .sources import (kernel_block, kernel_decls, kernel_dir, kernel_signatures,
                      kernel_sources, source_defines)

__all__ = ["kernel_dir", "kernel_sources", "source_defines", "kernel_block", "kernel_decls",
           "kernel_signatures", "check_launch_args", "COMPILE_OPTIONS", "Param",
           "parse_kernels", "parse_launch_bounds", "with_local_headers"]
