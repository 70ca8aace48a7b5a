"""Measured device peaks, taken in the same run as the benchmarks.

* GEMM peak: a large square SGEMM through the BLAS the backend uses — ``numpy.matmul``
  (OpenBLAS/MKL) on the CPU, ``cupy.matmul`` (cuBLAS) on the GPU; the best of the timed runs
  (the median is reported too).
* Memory bandwidth: a large array copy (read + write counted), ``numpy.copyto`` on the CPU or
  ``cupy`` ``copyto`` on the GPU — the ceiling a streaming kernel can reach.
"""
from __future__ import annotations

import numpy as np

from .timing import CupyEventTimer, Runner, WallTimer, run_interleaved

__all__ = ["gemm_peak", "copy_bandwidth"]


def _runner_for(xp, fn):
    if xp is np:
        return Runner("x", fn, WallTimer())
    return Runner("x", fn, CupyEventTimer(xp))


def gemm_peak(xp=np, n=2048, warmup=1, repeat=5, seed=0):
    """``{"n", "via", "gflops" (best), "gflops_median", "timing"}`` for an n x n x n SGEMM."""
    rng = np.random.default_rng(seed)
    a = [xp.asarray(rng.standard_normal((n, n), dtype=np.float32)) for _ in range(2)]
    b = xp.asarray(rng.standard_normal((n, n), dtype=np.float32))
    out = xp.empty((n, n), dtype=np.float32)
    r = _runner_for(xp, lambda i: xp.matmul(a[i % 2], b, out=out))
    t = run_interleaved([r], warmup, repeat)["x"]
    flops = 2.0 * n ** 3
    via = "numpy.matmul (CPU BLAS)" if xp is np else "cupy.matmul (cuBLAS)"
    return {"n": n, "via": via, "flops": flops, "gflops": flops / (t["min_ms"] * 1e6),
            "gflops_median": flops / (t["median_ms"] * 1e6), "timing": t}


def copy_bandwidth(xp=np, mib=128, warmup=1, repeat=5, seed=0):
    """``{"bytes", "via", "gbps" (best), "gbps_median", "timing"}``: read + write of a copy."""
    n = mib * 2**20 // 4
    src = xp.asarray(np.random.default_rng(seed).standard_normal(n, dtype=np.float32))
    dst = xp.empty_like(src)
    r = _runner_for(xp, lambda i: xp.copyto(dst, src))
    t = run_interleaved([r], warmup, repeat)["x"]
    moved = 2.0 * src.nbytes
    via = "numpy.copyto" if xp is np else "cupy.copyto (device to device)"
    return {"bytes": moved, "via": via, "gbps": moved / (t["min_ms"] * 1e6),
            "gbps_median": moved / (t["median_ms"] * 1e6), "timing": t}
